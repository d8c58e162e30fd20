"""The load generator: closed-loop POSTs of one JSON body, at a fixed concurrency.

Two implementations, both run as a separate process so that their cost lands outside the
server under test and is the same for every contender:

- ``wrk`` (Debian's ``wrk`` package) with ``wrk_post.lua``: the default when it is installed;
- a small asyncio client (this module's ``main``), used where ``wrk`` is missing, e.g. in
  the quick mode that CI runs.

Each keeps ``concurrency`` keep-alive connections busy for ``duration`` seconds and reports
requests/s, p50 and p99 latency and errors (non-2xx answers, socket errors, timeouts).
The body is ``BODY`` (one short sentence for ``POST /embed``) unless ``run_load`` is given
another; the route is the path of its ``url``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

__all__ = ["BODY", "Generator", "LoadResult", "available_generator", "parse_wrk", "run_load"]

SENTENCE = "A man is eating food."
BODY = json.dumps({"text": SENTENCE})
REQUEST_TIMEOUT_S = 30.0
LOOPBACK = ("127.0.0.1", "localhost")
WRK_SCRIPT = Path(__file__).with_name("wrk_post.lua")

Generator = Literal["wrk", "python"]

_WRK_LINE = re.compile(
    r"BENCH requests=(\d+) duration_us=(\d+) p50_us=(\d+) p99_us=(\d+) "
    r"socket_errors=(\d+) status_errors=(\d+) timeouts=(\d+)"
)


@dataclass(frozen=True)
class LoadResult:
    """What one run at one concurrency measured."""

    concurrency: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    generator_cpu_s: float = 0.0  # CPU the load generator itself used

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def available_generator() -> Generator:
    return "wrk" if shutil.which("wrk") else "python"


def run_load(
    generator: Generator, url: str, *, concurrency: int, duration: float, body: str = BODY
) -> LoadResult:
    """Drive ``url`` for ``duration`` seconds with ``concurrency`` connections POSTing ``body``."""
    if urlsplit(url).hostname not in LOOPBACK:
        raise ValueError(f"the benchmark only drives servers on 127.0.0.1, not {url}")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    if generator == "wrk":
        result = _run_wrk(url, concurrency, duration, body)
    else:
        result = _run_python(url, concurrency, duration, body)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return LoadResult(**{**asdict(result), "generator_cpu_s": cpu})


def _run_wrk(url: str, concurrency: int, duration: float, body: str) -> LoadResult:
    args = [
        "wrk",
        "--threads=1",
        f"--connections={concurrency}",
        f"--duration={max(1, round(duration))}s",
        f"--timeout={int(REQUEST_TIMEOUT_S)}s",
        f"--script={WRK_SCRIPT}",
        url,
    ]
    done = subprocess.run(
        args,
        env={**os.environ, "BENCH_BODY": body},
        capture_output=True,
        text=True,
        timeout=duration + REQUEST_TIMEOUT_S + 10,
        check=True,
    )
    return parse_wrk(done.stdout, concurrency)


def parse_wrk(output: str, concurrency: int) -> LoadResult:
    """Read the line ``wrk_post.lua`` prints when wrk is done."""
    match = _WRK_LINE.search(output)
    if match is None:
        raise RuntimeError(f"wrk printed no BENCH line; its output was:\n{output}")
    requests, duration_us, p50, p99, socket_errors, status_errors, timeouts = map(
        int, match.groups()
    )
    return LoadResult(
        concurrency=concurrency,
        requests=requests - status_errors,  # wrk counts non-2xx answers as requests too
        seconds=duration_us / 1e6,
        p50_ms=p50 / 1000,
        p99_ms=p99 / 1000,
        errors=socket_errors + status_errors + timeouts,
    )


def _run_python(url: str, concurrency: int, duration: float, body: str) -> LoadResult:
    args = [sys.executable, "-m", "benchmarks.load", url, str(concurrency), str(duration)]
    if body != BODY:
        args.append(f"--body={body}")
    done = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=duration + REQUEST_TIMEOUT_S + 10,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    fields = json.loads(done.stdout.strip().splitlines()[-1])
    return LoadResult(**fields)


# -- the asyncio client (``python -m benchmarks.load URL CONCURRENCY SECONDS [--body JSON]``) --


@dataclass
class _Tally:
    latencies: list[float]
    errors: int = 0


async def _connection(host: str, port: int, request: bytes, stop_at: float, tally: _Tally) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    while time.perf_counter() < stop_at:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            assert reader is not None
            started = time.perf_counter()
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head)[1])  # type: ignore[index]
            await reader.readexactly(length)
            if time.perf_counter() >= stop_at:
                break  # answered after the end: not counted, as in wrk
            if head.startswith((b"HTTP/1.1 2", b"HTTP/1.0 2")):
                tally.latencies.append(time.perf_counter() - started)
            else:
                tally.errors += 1
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, TypeError):
            tally.errors += 1
            if writer is not None:
                writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def _drive(url: str, concurrency: int, duration: float, body: str = BODY) -> LoadResult:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    payload = body.encode()
    request = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    tally = _Tally(latencies=[])
    started = time.perf_counter()
    stop_at = started + duration
    tasks = [_connection(host, port, request, stop_at, tally) for _ in range(concurrency)]
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(asyncio.gather(*tasks), duration + REQUEST_TIMEOUT_S)
    latencies = sorted(tally.latencies)
    return LoadResult(
        concurrency=concurrency,
        requests=len(latencies),
        seconds=duration,
        p50_ms=_percentile(latencies, 50) * 1000,
        p99_ms=_percentile(latencies, 99) * 1000,
        errors=tally.errors,
    )


def _percentile(ordered: list[float], pct: float) -> float:
    if not ordered:
        return 0.0
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="closed-loop POST load on 127.0.0.1")
    parser.add_argument("url")
    parser.add_argument("concurrency", type=int)
    parser.add_argument("seconds", type=float)
    parser.add_argument("--body", default=BODY, help="the JSON body of every request")
    args = parser.parse_args(argv)
    if urlsplit(args.url).hostname not in LOOPBACK:
        parser.error("only 127.0.0.1 is driven")
    drive = _drive(args.url, args.concurrency, args.seconds, args.body)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(drive)
    else:
        result = uvloop.run(drive)
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
