"""Streamed text generation, with and without shared model steps: time to first chunk, chunks/s.

    python -m benchmarks.streaming                  # full: 2 rounds, 3 s warm-up + 10 s each
    python -m benchmarks.streaming --quick          # 1 round, 1 s warm-up + 2 s each
    python -m benchmarks.streaming --out report.md --json raw.json

Contenders, one after the other, never two at once, both serving the tiny offline GPT-2 of
``examples/tiny_lm.py`` at ``POST /generate`` (Server-Sent Events, one event per text piece):

- batched: ``mfk serve examples/generate.py`` (``max_batch_size=16``: concurrent streams share
  one forward pass per step);
- unbatched: ``mfk serve benchmarks/apps/generate_unbatched.py:GeneratorUnbatched`` (the same
  class with ``max_batch_size=1``: each stream steps the model on its own).

Each server is started, checked against ``tiny_lm.reference_text`` (the run stops if a
streamed text differs), then driven at each concurrency by closed-loop asyncio clients
(httpx, in this process): a warm-up, then a measured window. Chunks are counted by arrival
time inside the window; latency figures come from the requests sent inside it, and the load
goes on until the last of those has finished. Every server is stopped, also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from benchmarks.contenders import BIN, READY_TIMEOUT_S, ROUTE, Contender, Server, serving
from benchmarks.memory import tree_cpu_seconds
from benchmarks.serving import machine

__all__ = ["CONTENDERS", "Measurement", "Preset", "Stream", "Window", "best_of", "main"]

GENERATE = "/generate"
PROMPTS = ("The lighthouse", "In the morning", "The keeper climbed the narrow stairs and", "Bread")
REQUEST_TIMEOUT_S = 60.0  # one whole stream
DRAIN_TIMEOUT_S = 60.0  # after the window, for the streams sent inside it to finish


@dataclass(frozen=True)
class Preset:
    seconds: float  # measured window per concurrency
    warmup: float  # load before the window, unmeasured
    rounds: int  # every contender is measured this many times


FULL = Preset(seconds=10, warmup=3, rounds=2)
QUICK = Preset(seconds=2, warmup=1, rounds=1)


def _mfk_serve(target: str) -> Callable[[int], list[str]]:
    def command(port: int) -> list[str]:
        return [
            *(str(BIN / "mfk"), "serve", target),
            *("--host=127.0.0.1", f"--port={port}", "--log-level=warning"),
        ]

    return command


CONTENDERS: dict[str, Contender] = {
    c.key: c
    for c in (
        Contender("batched", "mfk serve, batch 16", _mfk_serve("examples/generate.py")),
        Contender(
            "unbatched",
            "mfk serve, batch 1",
            _mfk_serve("benchmarks/apps/generate_unbatched.py:GeneratorUnbatched"),
        ),
    )
}


# -- one stream --------------------------------------------------------------------------------


@dataclass
class Stream:
    """One request: when it was sent, and when its chunks arrived (``perf_counter`` seconds)."""

    sent: float
    arrivals: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    error: str | None = None  # non-200, an ``event: error``, no chunk at all, or an exception
    finished: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.arrivals)

    @property
    def first_s(self) -> float:
        return self.arrivals[0] - self.sent

    @property
    def rate(self) -> float | None:
        """Chunks/s after the first: (chunks - 1) / (last - first arrival)."""
        span = self.arrivals[-1] - self.arrivals[0] if len(self.arrivals) > 1 else 0.0
        return (len(self.arrivals) - 1) / span if span > 0 else None


async def stream_once(
    client: httpx.AsyncClient,
    url: str,
    prompt: str,
    max_new_tokens: int,
    *,
    keep_text: bool = False,
    started: Callable[[Stream], object] | None = None,
) -> Stream:
    """POST one prompt and read its event stream to the end; ``started`` sees it sent."""
    body = {"prompt": prompt, "max_new_tokens": max_new_tokens}
    found = Stream(sent=time.perf_counter())
    if started is not None:
        started(found)
    try:
        async with client.stream("POST", url, json=body) as answer:
            if answer.status_code != 200:
                await answer.aread()
                found.error = f"HTTP {answer.status_code}: {answer.text[:200]}"
                return found
            failed = False
            async for line in answer.aiter_lines():
                if line.startswith("event: error"):
                    failed = True
                elif line.startswith("data:"):
                    if failed:
                        found.error = f"error event: {line[5:].strip()[:200]}"
                        break
                    found.arrivals.append(time.perf_counter())
                    if keep_text:
                        found.texts.append(str(json.loads(line[5:])["text"]))
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        found.error = f"{type(exc).__name__}: {exc}"
    if found.error is None and not found.arrivals:
        found.error = "the stream ended without a chunk"
    found.finished = True
    return found


# -- the correctness check ---------------------------------------------------------------------


def reference_texts(model_dir: Path, max_new_tokens: int) -> dict[str, str]:
    """What transformers' ``generate(do_sample=False)`` continues each prompt with."""
    from examples import tiny_lm

    model, tokenizer = tiny_lm.load(model_dir)
    return {p: tiny_lm.reference_text(model, tokenizer, p, max_new_tokens) for p in PROMPTS}


async def _check(url: str, max_new_tokens: int, expected: dict[str, str]) -> list[str]:
    """Stream every prompt alone, then all at once; return what differs from ``expected``."""
    problems: list[str] = []
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as client:
        alone = [
            await stream_once(client, url, p, max_new_tokens, keep_text=True) for p in PROMPTS
        ]
        together = await asyncio.gather(
            *(stream_once(client, url, p, max_new_tokens, keep_text=True) for p in PROMPTS)
        )
    for how, streams in (("alone", alone), ("concurrently", together)):
        for prompt, got in zip(PROMPTS, streams, strict=True):
            if got.error is not None:
                problems.append(f"{prompt!r} ({how}): {got.error}")
            elif (text := "".join(got.texts)) != expected[prompt]:
                problems.append(f"{prompt!r} ({how}): streamed {text!r}, expected {expected[prompt]!r}")
    return problems


# -- the load ----------------------------------------------------------------------------------


@dataclass
class Window:
    """One concurrency on one server: the measured window and what happened in it."""

    concurrency: int
    seconds: float
    chunks: int  # arrived inside the window, from any stream
    requests: int  # sent inside the window and streamed to the end
    first_p50_ms: float
    first_p95_ms: float
    stream_rate: float  # median over those requests of their own chunks/s
    errors: int  # failed requests of the whole run, warm-up included
    server_cpu_s: float  # the server's process tree, inside the window
    client_cpu_s: float  # this process (the clients), inside the window
    first_ms: list[float] = field(default_factory=list, repr=False)  # per request, raw

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_s_per_1000_chunks(self) -> float:
        return 1000 * self.server_cpu_s / self.chunks if self.chunks else float("nan")


async def drive(
    url: str,
    server_pid: int,
    *,
    concurrency: int,
    max_new_tokens: int,
    warmup: float,
    seconds: float,
) -> Window:
    """``concurrency`` clients stream prompts back to back; measure ``seconds`` after ``warmup``.

    The load goes on past the window until every stream sent inside it has finished, so that
    each measured stream ran under the full concurrency.
    """
    prompts = itertools.cycle(PROMPTS)
    streams: list[Stream] = []
    in_flight: set[int] = set()  # ids of the streams not finished yet
    begun = time.perf_counter()
    start_at, stop_at = begun + warmup, begun + warmup + seconds
    measured_done = asyncio.Event()
    cpu: dict[str, float] = {}

    def note_done() -> None:
        if time.perf_counter() >= stop_at and not any(
            streams[i].sent < stop_at for i in in_flight
        ):
            measured_done.set()

    def sent(stream: Stream) -> None:
        in_flight.add(len(streams))
        streams.append(stream)

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not measured_done.is_set():
            index = len(streams)
            await stream_once(client, url, next(prompts), max_new_tokens, started=sent)
            in_flight.discard(index)
            note_done()

    async def clock() -> None:
        await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
        cpu["server"], cpu["client"] = tree_cpu_seconds(server_pid), time.process_time()
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
        cpu["server"] = tree_cpu_seconds(server_pid) - cpu["server"]
        cpu["client"] = time.process_time() - cpu["client"]
        note_done()

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        tasks = [asyncio.create_task(client_loop(client)) for _ in range(concurrency)]
        await clock()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(measured_done.wait(), DRAIN_TIMEOUT_S)
        measured_done.set()
        await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT_S)
        for task in tasks:
            task.cancel()
    return _window(streams, concurrency, start_at, stop_at, cpu)


def _window(
    streams: list[Stream], concurrency: int, start_at: float, stop_at: float, cpu: dict[str, float]
) -> Window:
    measured = [s for s in streams if start_at <= s.sent < stop_at and s.ok]
    first_ms = sorted(1000 * s.first_s for s in measured)
    rates = [r for s in measured if (r := s.rate) is not None]
    return Window(
        concurrency=concurrency,
        seconds=stop_at - start_at,
        chunks=sum(start_at <= t < stop_at for s in streams for t in s.arrivals),
        requests=len(measured),
        first_p50_ms=_percentile(first_ms, 50),
        first_p95_ms=_percentile(first_ms, 95),
        stream_rate=statistics.median(rates) if rates else 0.0,
        errors=sum(1 for s in streams if s.finished and not s.ok),
        server_cpu_s=cpu.get("server", float("nan")),
        client_cpu_s=cpu.get("client", float("nan")),
        first_ms=[round(ms, 3) for ms in first_ms],
    )


def _percentile(ordered: list[float], pct: float) -> float:
    """Nearest rank, as ``benchmarks.load`` computes its percentiles."""
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]
