"""What ``mfk serve`` sets up in the process it owns (a router mounted in someone else's app
leaves all of this to them): the event loop, open-file limits, the limit on requests at once,
signals, log output."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Coroutine, Generator
from types import FrameType
from typing import Any, TypeVar

import uvicorn
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from .._http.errors import error_response, request_id
from ..exceptions import ErrorCode, QueueFullError

__all__ = [
    "ConcurrencyLimit",
    "OpenFiles",
    "Server",
    "configure_logging",
    "raise_open_files_limit",
    "run_on_best_loop",
]

T = TypeVar("T")

# File descriptors kept back from --limit-concurrency for what else the process opens
# (weights, libraries, logs, the model's own sockets).
RESERVED_FILES = 128
MAX_OPEN_FILES = 65_536


class OpenFiles:
    """The open-file limit after ``raise_open_files_limit``."""

    def __init__(self, soft: int, hard: int) -> None:
        self.soft = soft
        self.hard = hard

    def connection_limit(self) -> int:
        """Connections to accept at most: below the limit, so accepting never fails (a
        failed accept is a traceback per attempt, and nothing answers meanwhile)."""
        return max(16, self.soft - RESERVED_FILES)


def raise_open_files_limit() -> OpenFiles:
    """Raise the soft open-file limit to the hard one (at most 65536)."""
    try:
        import resource
    except ImportError:  # pragma: no cover (Windows)
        return OpenFiles(MAX_OPEN_FILES, MAX_OPEN_FILES)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(hard, MAX_OPEN_FILES)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return OpenFiles(min(soft, MAX_OPEN_FILES), hard)


class ConcurrencyLimit:
    """ASGI middleware: at most ``limit`` HTTP requests at once (a stream counts until its
    end). One more is answered at once with the kit's 503 ``overloaded`` (``Retry-After: 1``,
    ``X-Request-ID``) and ``Connection: close``, so that a flood of requests lets go of its
    connections as fast as it opens them.

    It replaces uvicorn's own ``limit_concurrency`` for requests, whose answer is a plain-text
    503; uvicorn keeps its limit on connections (``OpenFiles.connection_limit``), which no
    app sees.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
        elif self.in_flight >= self.limit:
            await self.refuse(scope, receive, send)
        else:
            self.in_flight += 1
            try:
                await self.app(scope, receive, send)
            finally:
                self.in_flight -= 1

    async def refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = QueueFullError(
            f"the server is answering {self.limit} requests at once, its limit "
            "(mfk serve --limit-concurrency); retry after Retry-After",
            code=ErrorCode.OVERLOADED,
        )
        response = error_response(error, request_id(HTTPConnection(scope)))
        response.headers["connection"] = "close"
        await response(scope, receive, send)


def run_on_best_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop when it is installed (``uvicorn[standard]`` brings it), else on
    asyncio's own loop, and close the loop after."""
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    with contextlib.suppress(ImportError):
        import uvloop

        factory = uvloop.new_event_loop
    loop = factory()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


class Server(uvicorn.Server):
    """uvicorn's server, except that SIGTERM is not raised again after the shutdown: a
    drained, clean stop on SIGTERM exits 0 (SIGINT still ends as a KeyboardInterrupt)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.signals: list[int] = []

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.signals.append(sig)
        super().handle_exit(sig, frame)


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and an access line's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(getattr(record, "access", {}))
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line)


def configure_logging(level: str, *, access: bool, as_json: bool) -> None:
    """The kit's log lines on stderr (a stalled model, a failed item, each batch with
    --log-level debug, each request with --access-log), as text like uvicorn's or JSON."""
    kit = logging.getLogger("modal_fastapi_kit")
    if not kit.handlers:
        kit.addHandler(logging.StreamHandler(sys.stderr))
    formatter = (
        JSONFormatter() if as_json else logging.Formatter("%(levelname)-9s %(name)s: %(message)s")
    )
    for handler in kit.handlers:
        handler.setFormatter(formatter)
    kit.setLevel(level.upper())
    kit.propagate = False
    logging.getLogger("modal_fastapi_kit.access").setLevel(
        logging.INFO if access else logging.WARNING
    )
