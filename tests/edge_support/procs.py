"""Start and stop the test's own processes, bounded in time, on 127.0.0.1 only."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["free_port", "running", "wait_for"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    log: Path | None,
    proc: subprocess.Popen[bytes] | None = None,
) -> None:
    """Poll ``check`` until it is true; fail at ``timeout`` or when ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (proc is None or proc.poll() is None):
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    exited = f" (exited with {proc.returncode})" if proc and proc.poll() is not None else ""
    raise TimeoutError(f"{what} not ready within {timeout}s{exited}\n{tail}")


@contextlib.contextmanager
def running(
    argv: list[str], log: Path, *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` with output in ``log``; stop it (TERM, then KILL) when the block ends."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the group this call started
                proc.wait(timeout=10)
