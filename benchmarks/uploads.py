"""Uploads: what a server holds in memory while 16 clients each upload a 20 MiB file at once.

    python -m benchmarks.uploads                          # every contender installed here
    python -m benchmarks.uploads --quick                  # 4 clients x 2 MiB, one round
    python -m benchmarks.uploads --bentoml-python /tmp/bentoml-venv/bin/python

Every contender serves ``POST /upload``, which reads the file in 1 MiB pieces and answers its
sha256 and size (each answer is checked against the file sent):

- ``mfk``: ``mfk serve benchmarks/apps/upload_mfk.py`` (``File.chunks()`` in ``predict``);
- ``fastapi``: plain FastAPI, ``UploadFile`` for a form and ``request.stream()`` for the raw
  body (``benchmarks/apps/upload_fastapi.py``): Starlette alone;
- ``litserve``: LitServe 0.2.19, the form handed to ``decode_request``
  (``benchmarks/apps/upload_litserve.py``); it parses any other body as JSON, so it has no
  raw row;
- ``bentoml``: BentoML, a ``Path`` parameter (``benchmarks/apps/upload_bentoml.py``), run by
  the interpreter ``--bentoml-python`` names (a venv of its own: installing it into the
  project's venv would change a version the lock pins); no raw row.

For each contender and each way to send (a ``multipart/form-data`` part, then the raw body) a
fresh server is started and left idle for a second; its RSS is read (idle) and the kernel's
high-water mark of each of its processes reset (``/proc/PID/clear_refs``). Then the clients
upload, all at once, ``--rounds`` times. Reported, in MiB:

- ``peak``: the summed RSS of the server's process tree, sampled every 10 ms, above idle;
- ``hwm``: ``VmHWM`` (``/proc/PID/status``) above the idle RSS, summed over the processes:
  the kernel's own peak, which no sampling interval misses (with several processes, a sum of
  peaks that need not have coincided);
- ``time``: the best round, from the first byte sent to the last answer, and its MiB/s.

The clients run in this process (httpx) and share the machine's cores with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from benchmarks.contenders import BIN, Contender, Server, free_port
from benchmarks.memory import tree_pids

__all__ = ["MODES", "UPLOADERS", "Result", "Uploader", "main", "measure"]

MIB = 1 << 20
MODES = ("multipart", "raw")
SAMPLE_S = 0.01
IDLE_S = 1.0


@dataclass(frozen=True)
class Uploader:
    """A contender of this benchmark: how it is started, where its readiness is asked, and
    the modes it cannot take (with why)."""

    key: str
    label: str
    command: Callable[[int], list[str]]
    ready_path: str
    refuses: dict[str, str] = field(default_factory=dict)
    requires: str | None = None  # a module that must be importable here

    def contender(self) -> Contender:
        return Contender(self.key, self.label, self.command, requires=self.requires)


def _python(module: str, *args: str, python: str = sys.executable) -> Callable[[int], list[str]]:
    def command(port: int) -> list[str]:
        return [python, "-m", module, *args, f"--port={port}"]

    return command


def _bentoml_command(python: str) -> Callable[[int], list[str]]:
    def command(port: int) -> list[str]:
        return [
            python,
            "-m",
            "bentoml",
            "serve",
            "benchmarks.apps.upload_bentoml:Hasher",
            "--host=127.0.0.1",
            f"--port={port}",
        ]

    return command


NO_RAW_LITSERVE = "LitServe parses a body that is not a form as JSON"
NO_RAW_BENTOML = "BentoML takes a file as a form part"

UPLOADERS: dict[str, Uploader] = {
    u.key: u
    for u in (
        Uploader(
            "mfk",
            "mfk serve",
            lambda port: [
                str(BIN / "mfk"),
                "serve",
                "benchmarks/apps/upload_mfk.py",
                "--host=127.0.0.1",
                f"--port={port}",
                "--log-level=warning",
            ],
            "/readyz",
        ),
        Uploader(
            "fastapi",
            "plain FastAPI",
            _python(
                "uvicorn",
                "benchmarks.apps.upload_fastapi:app",
                "--host=127.0.0.1",
                "--log-level=warning",
                "--no-access-log",
            ),
            "/healthz",
        ),
        Uploader(
            "litserve",
            "LitServe 0.2.19",
            _python("benchmarks.apps.upload_litserve"),
            "/health",
            refuses={"raw": NO_RAW_LITSERVE},
            requires="litserve",
        ),
    )
}


@dataclass
class Result:
    contender: str
    mode: str
    clients: int
    mib: float
    idle_mib: float = 0.0
    peak_mib: float = 0.0  # sampled tree RSS above idle
    hwm_mib: float | None = None  # VmHWM above idle RSS, summed over the tree
    seconds: float = 0.0  # the best round
    rounds: int = 0
    processes: int = 0
    skipped: str = ""  # why there is no figure

    @property
    def mib_per_s(self) -> float:
        return self.clients * self.mib / self.seconds if self.seconds else 0.0


# -- /proc ----------------------------------------------------------------------------------


def _status(pid: int) -> dict[str, int]:
    """The ``kB`` lines of ``/proc/PID/status``, in bytes."""
    found: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                found[key] = int(value.split()[0]) * 1024
    return found


def _rss(pids: list[int]) -> dict[int, int]:
    return {pid: _status(pid).get("VmRSS", 0) for pid in pids}


def _reset_hwm(pids: list[int]) -> bool:
    """Reset each process's VmHWM to its RSS now (Linux 4.0+); whether it worked for all."""
    done = True
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            done = False
    return done


class _Sampler:
    """The summed RSS of a process tree every ``SAMPLE_S`` seconds, in a thread."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.peak = 0
        self.processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        pids = tree_pids(self.root)
        last_walk = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - last_walk > 0.5:  # a tree walk reads all of /proc
                pids, last_walk = tree_pids(self.root), time.monotonic()
            rss = _rss(pids)
            self.peak = max(self.peak, sum(rss.values()))
            self.processes = max(self.processes, len(pids))
            self._stop.wait(SAMPLE_S)


# -- the clients ----------------------------------------------------------------------------


async def _upload_all(url: str, mode: str, data: bytes, clients: int) -> float:
    """``clients`` uploads of ``data`` at once; the seconds until the last answer."""
    want = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:

        async def one() -> None:
            if mode == "multipart":
                files = {"file": ("upload.bin", data, "application/octet-stream")}
                response = await client.post(url, files=files)
            else:
                headers = {"content-type": "application/octet-stream"}
                response = await client.post(url, content=data, headers=headers)
            if response.status_code != 200:
                raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:300]}")
            got = {k: response.json().get(k) for k in want}
            if got != want:
                raise RuntimeError(f"{url} answered {got}, not {want}")

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(clients)))
        return time.perf_counter() - started


# -- one measurement ------------------------------------------------------------------------


@contextlib.contextmanager
def _serving(uploader: Uploader, log: Path) -> Iterator[tuple[Server, str]]:
    port = free_port()
    with log.open("a") as out:
        server = Server(uploader.contender(), port, out)
        try:
            base = f"http://127.0.0.1:{port}"
            server.wait_ready(urllib.request.Request(base + uploader.ready_path))
            yield server, base
        finally:
            server.stop()


def measure(
    uploader: Uploader, mode: str, *, clients: int, mib: float, rounds: int, log: Path
) -> Result:
    """Start ``uploader`` afresh, let it idle, then upload; its figures for ``mode``."""
    result = Result(uploader.label, mode, clients, mib)
    if mode in uploader.refuses:
        result.skipped = uploader.refuses[mode]
        return result
    data = os.urandom(int(mib * MIB))
    with _serving(uploader, log) as (server, base):
        time.sleep(IDLE_S)
        pids = tree_pids(server.pid)
        idle = _rss(pids)
        result.idle_mib = sum(idle.values()) / MIB
        hwm_reset = _reset_hwm(pids)
        times = []
        with _Sampler(server.pid) as sampler:
            for _ in range(rounds):
                times.append(asyncio.run(_upload_all(base + "/upload", mode, data, clients)))
        result.peak_mib = max(0, sampler.peak - sum(idle.values())) / MIB
        result.processes = sampler.processes
        if hwm_reset:
            grown = [_status(pid).get("VmHWM", 0) - rss for pid, rss in idle.items()]
            result.hwm_mib = sum(max(0, g) for g in grown) / MIB
        result.seconds = min(times)
        result.rounds = rounds
    return result


# -- the report -----------------------------------------------------------------------------


def table(results: list[Result]) -> str:
    """The results as a markdown table."""
    rows = [
        "| server | body | idle RSS | peak above idle | VmHWM above idle | time (best) | MiB/s |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        if r.skipped:
            rows.append(f"| {r.contender} | {r.mode} | - | - | - | - | {r.skipped} |")
            continue
        hwm = "-" if r.hwm_mib is None else f"{r.hwm_mib:.0f}"
        rows.append(
            f"| {r.contender} | {r.mode} | {r.idle_mib:.0f} | {r.peak_mib:.0f} | {hwm} "
            f"| {r.seconds:.2f} s | {r.mib_per_s:.0f} |"
        )
    return "\n".join(rows)


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    mem = next(
        int(line.split()[1]) // (1024 * 1024)
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem} GiB, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.uploads", description=__doc__.split("\n", 1)[0]
    )
    parser.add_argument("--contenders", default=",".join([*UPLOADERS, "bentoml"]))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--mib", type=float, default=20.0, help="each upload's size")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="4 clients x 2 MiB, one round")
    parser.add_argument(
        "--bentoml-python", help="the interpreter of a venv with bentoml (see the docstring)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.mib, args.rounds = 4, 2.0, 1
    uploaders = dict(UPLOADERS)
    if args.bentoml_python:
        uploaders["bentoml"] = Uploader(
            "bentoml",
            "BentoML",
            _bentoml_command(args.bentoml_python),
            "/readyz",
            refuses={"raw": NO_RAW_BENTOML},
        )
    log = Path(tempfile.mkdtemp(prefix="mfk-uploads-")) / "servers.log"
    print(f"machine: {machine()}", flush=True)
    print(
        f"{args.clients} clients x {args.mib:g} MiB, {args.rounds} round(s); server logs: {log}",
        flush=True,
    )
    results: list[Result] = []
    for key in args.contenders.split(","):
        uploader = uploaders.get(key)
        for mode in args.modes.split(","):
            if uploader is None:
                why = "give --bentoml-python" if key == "bentoml" else "unknown contender"
                results.append(Result(key, mode, args.clients, args.mib, skipped=why))
            elif not uploader.contender().available():
                why = f"{uploader.requires} is not installed (benchmarks/requirements.txt)"
                results.append(Result(uploader.label, mode, args.clients, args.mib, skipped=why))
            else:
                results.append(
                    measure(
                        uploader,
                        mode,
                        clients=args.clients,
                        mib=args.mib,
                        rounds=args.rounds,
                        log=log,
                    )
                )
            print(table(results[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(results))
    if args.json:
        args.json.write_text(
            json.dumps({"machine": machine(), "results": [asdict(r) for r in results]}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
