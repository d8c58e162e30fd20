"""``mfk serve FILE.py[:Class]``: the class on uvicorn, its router at the root, plus /docs."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import sys
import time
from typing import Any

import uvicorn

from .._assembly import service_app, service_router
from .._backends import Backend, LoadState
from .._core.spec import service_spec
from .._heap import freeze_loaded_heap
from ._loading import load_service

__all__ = ["add_parser", "run"]

PROGRESS_EVERY = 5.0  # seconds between progress lines when stderr is not a terminal
SHUTDOWN_GRACE = 5  # seconds past request_timeout that a graceful shutdown may take

# GNU OpenMP (torch's CPU thread pool) lets idle workers spin 300,000 rounds before sleeping:
# milliseconds of a core after every batch, taken from the event loop that must answer that
# batch and read the next. A short spin keeps the hand-off between consecutive operations of
# one forward pass fast and lets idle workers sleep. Set before the user's module is imported
# (OpenMP reads it once, when torch loads), and only where the user has set no policy.
OPENMP_SPIN_COUNT = "10000"


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve a ModelServer locally on uvicorn",
        description="Serve a @gpu_service class locally, with the same router and batching "
        "as on Modal.",
    )
    parser.add_argument("target", metavar="FILE.py[:Class]", help="file holding the class")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
    )
    parser.add_argument("--access-log", action="store_true", help="log every request")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", OPENMP_SPIN_COUNT)
    _log_to_stderr(args.log_level)
    spec = service_spec(load_service(args.target))
    router = service_router(spec)
    server = uvicorn.Server(
        uvicorn.Config(
            service_app(spec, router),
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            access_log=args.access_log,
            lifespan="on",
            # A request never waits past its deadline; a stream or a stuck connection that
            # outlives it is cut, so SIGTERM ends the process in bounded time.
            timeout_graceful_shutdown=math.ceil(spec.config.request_timeout) + SHUTDOWN_GRACE,
        )
    )
    return asyncio.run(_serve(server, router.backend, spec.name))


async def _serve(server: uvicorn.Server, backend: Backend, name: str) -> int:
    watcher = asyncio.create_task(_report_progress(server, backend, name))
    try:
        await server.serve()
    finally:
        watcher.cancel()
    loaded = watcher.done() and not watcher.cancelled() and watcher.result()
    return 0 if server.started and loaded is not False else 1


async def _report_progress(server: uvicorn.Server, backend: Backend, name: str) -> bool:
    """Show loading progress, then the URL; stop the server if the model fails to load."""
    while not server.started:  # noqa: ASYNC110 (uvicorn offers no event for this)
        await asyncio.sleep(0.05)
    url = _url(server)
    started = time.monotonic()
    tty = sys.stderr.isatty()
    last_line = -PROGRESS_EVERY
    _say(f"Loading {name} (the server is up; /readyz answers 503 until it is ready)")
    while backend.state is LoadState.LOADING:
        elapsed = time.monotonic() - started
        if tty:
            print(f"\r  loading weights... {elapsed:5.1f}s", end="", file=sys.stderr, flush=True)
        elif elapsed - last_line >= PROGRESS_EVERY:
            last_line = elapsed
            _say(f"  loading weights... {elapsed:.0f}s")
        await asyncio.sleep(0.1)
    if tty:
        print(file=sys.stderr)
    elapsed = time.monotonic() - started
    if backend.state is LoadState.READY:
        freeze_loaded_heap()  # this process is ours: see _heap.py
        _say(f"{name} ready in {elapsed:.1f}s: {url}  (docs: {url}/docs)")
        return True
    _say(f"error: {backend.error or 'the model did not load'}; stopping")
    server.should_exit = True
    return False


def _log_to_stderr(level: str) -> None:
    """The kit's own log lines (a stalled model, a failed item, with --log-level debug each
    batch's size), on stderr like uvicorn's. This process is ours to configure."""
    kit = logging.getLogger("modal_fastapi_kit")
    if not kit.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)-9s %(name)s: %(message)s"))
        kit.addHandler(handler)
    kit.setLevel(level.upper())
    kit.propagate = False


def _url(server: uvicorn.Server) -> str:
    host, port = server.config.host, server.config.port
    for srv in server.servers:
        for sock in srv.sockets:
            port = sock.getsockname()[1]
            break
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
