"""Start real servers on 127.0.0.1 for end-to-end tests, and always stop them."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import uvicorn

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Process:
    """A child process whose output is collected in the background."""

    def __init__(
        self,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
        preexec: Callable[[], None] | None = None,
    ) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            args,
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            preexec_fn=preexec,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := regex.search(line):
                    return match
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"no line matching {pattern!r} in {timeout}s; output:\n{self.output}")

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


@contextlib.contextmanager
def running(
    args: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
    preexec: Callable[[], None] | None = None,
) -> Iterator[Process]:
    process = Process(args, env=env, cwd=cwd, preexec=preexec)
    try:
        yield process
    finally:
        process.stop()


def raw_post(port: int, x: int, path: str = "/double") -> socket.socket:
    """Send a JSON POST ``{"x": x}`` on a raw socket and return it unread, still open."""
    body = f'{{"x": {x}}}'.encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n".encode()
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def no_modal_credentials(tmp_path: Path) -> dict[str, str]:
    """This process's environment without any Modal credentials (env vars or config file)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    env["MODAL_CONFIG_PATH"] = str(tmp_path / "no-modal.toml")
    env["HF_HUB_OFFLINE"] = "1"
    return env


def wait_ready(base_url: str, path: str = "/readyz", timeout: float = 120) -> list[int]:
    """Poll ``path`` until it answers 200; return every status seen on the way."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base_url, timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                status = client.get(path).status_code
            except httpx.TransportError:
                status = 0
            seen.append(status)
            if status == 200:
                return seen
            time.sleep(0.05)
    raise AssertionError(f"{base_url}{path} not ready in {timeout}s; statuses: {seen[-5:]}")


class ThreadedServer:
    """An ASGI app on uvicorn in a thread of this process, on 127.0.0.1; stopped on exit."""

    def __init__(
        self, app: object, *, certfile: str | None = None, keyfile: str | None = None
    ) -> None:
        """Over TLS when given a certificate and its key."""
        self.port = free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            ssl_certfile=certfile,
            ssl_keyfile=keyfile,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def certificate(tmp: Path, name: str) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for ``name`` and its key, made with openssl."""
    cert, key = tmp / f"{name}.pem", tmp / f"{name}.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-nodes", "-days", "1"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-keyout", str(key), "-out", str(cert)),
            *("-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}"),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key
