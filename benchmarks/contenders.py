"""The servers under test, how each is started, and how it is stopped (always).

Every contender serves the example model (``examples/embeddings.py``) at ``POST /embed`` on
127.0.0.1 with uvicorn's defaults (uvloop, httptools, no access log), from the repository
root, in a process group of its own so that every process it starts can be stopped.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from benchmarks.load import BODY

__all__ = ["CONTENDERS", "DEFAULT_CONTENDERS", "Contender", "Server", "free_port", "serving"]

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ROUTE = "/embed"
READY_TIMEOUT_S = 180.0
STOP_GRACE_S = 10.0


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    command: Callable[[int], list[str]]
    requires: str | None = None  # a module that must be importable (a benchmark-only install)

    def available(self) -> bool:
        return self.requires is None or importlib.util.find_spec(self.requires) is not None


def _uvicorn(app: str) -> Callable[[int], list[str]]:
    def command(port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            "--host=127.0.0.1",
            f"--port={port}",
            "--log-level=warning",
            "--no-access-log",
        ]

    return command


def _module(name: str) -> Callable[[int], list[str]]:
    def command(port: int) -> list[str]:
        return [sys.executable, "-m", f"benchmarks.apps.{name}", f"--port={port}"]

    return command


_litserve = _module("litserve_app")


def _mfk(port: int) -> list[str]:
    return [
        str(BIN / "mfk"),
        "serve",
        "examples/embeddings.py",
        "--host=127.0.0.1",
        f"--port={port}",
        "--log-level=warning",
    ]


DEFAULT_CONTENDERS = ("plain", "litserve", "mfk")


def _mfk_target(target: str) -> Callable[[int], list[str]]:
    def command(port: int) -> list[str]:
        return [*_mfk(port)[:2], target, *_mfk(port)[3:]]

    return command


def _mfk_variant(name: str) -> Callable[[int], list[str]]:
    return _mfk_target(f"benchmarks/apps/embeddings_variants.py:{name}")


CONTENDERS: dict[str, Contender] = {
    c.key: c
    for c in (
        Contender("plain", "plain FastAPI", _uvicorn("benchmarks.apps.plain_fastapi:app")),
        Contender("litserve", "LitServe (batch 32)", _litserve, requires="litserve"),
        Contender("mfk", "mfk serve", _mfk),
        # Not in the default run: what metrics and keys cost (apps/embeddings_variants.py).
        Contender("mfk-bare", "mfk serve, no metrics", _mfk_variant("Bare")),
        Contender("mfk-guarded", "mfk serve, keys + metrics", _mfk_variant("Guarded")),
        # BENCH_DTYPE and BENCH_MAX_BATCH_SIZE (benchmarks/gpu.sh)
        Contender("mfk-tuned", "mfk serve, tuned", _mfk_variant("Tuned")),
        # A model that does no work, for the request path's own cost (benchmarks/noop.py).
        Contender("noop-raw", "raw ASGI app", _uvicorn("benchmarks.apps.noop:raw_app")),
        Contender("noop-fastapi", "plain FastAPI", _uvicorn("benchmarks.apps.noop:fastapi_app")),
        Contender("noop-mfk", "mfk serve", _mfk_target("benchmarks/apps/noop.py:Noop")),
        Contender(
            "noop-mfk-bare",
            "mfk serve, no metrics",
            _mfk_target("benchmarks/apps/noop.py:NoopBare"),
        ),
        Contender(
            "noop-mfk-guarded",
            "mfk serve, keys + metrics",
            _mfk_target("benchmarks/apps/noop.py:NoopGuarded"),
        ),
        Contender("noop-litserve", "LitServe", _module("noop_litserve"), requires="litserve"),
    )
}


class Server:
    """One running contender."""

    def __init__(
        self,
        contender: Contender,
        port: int,
        log: IO[str],
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``env``: variables to set for this server on top of this process's environment."""
        self.contender = contender
        self.url = f"http://127.0.0.1:{port}{ROUTE}"
        self.log = log
        self.proc = subprocess.Popen(
            contender.command(port),
            cwd=ROOT,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(
        self, request: urllib.request.Request | None = None, timeout: float = READY_TIMEOUT_S
    ) -> float:
        """Send ``request`` (by default the benchmark's body, POSTed to the route) until it is
        answered 200; return the seconds it took."""
        started = time.monotonic()
        if request is None:
            headers = {"content-type": "application/json"}
            if authorization := os.environ.get("BENCH_AUTHORIZATION"):  # as wrk sends it
                headers["authorization"] = authorization
            request = urllib.request.Request(self.url, data=BODY.encode(), headers=headers)
        while (elapsed := time.monotonic() - started) < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.contender.label} exited ({self.proc.returncode})")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(request, timeout=5) as answer,
            ):
                if answer.status == 200:
                    return elapsed
            time.sleep(0.2)
        raise RuntimeError(f"{self.contender.label} did not answer 200 within {timeout:.0f}s")

    def stop(self) -> None:
        """SIGINT to the whole process group, then SIGTERM, then SIGKILL."""
        for sig, grace in (
            (signal.SIGINT, STOP_GRACE_S),
            (signal.SIGTERM, 5.0),
            (signal.SIGKILL, 5.0),
        ):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                if self.proc.poll() is not None and not _group_alive(self.proc.pid):
                    return
                time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serving(
    contender: Contender, log: IO[str], env: Mapping[str, str] | None = None
) -> Iterator[Server]:
    """Start ``contender`` (with ``env`` added) and stop it on the way out, whatever happened."""
    server = Server(contender, free_port(), log, env)
    try:
        yield server
    finally:
        server.stop()
