"""``mfk serve FILE.py[:Class]``: the class on uvicorn, its router at the root, plus /docs."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from .._assembly import service_app, service_router
from .._backends import Backend, LoadState
from .._core.spec import service_spec
from .._heap import freeze_loaded_heap
from ._loading import load_service
from ._process import (
    RESERVED_FILES,
    ConcurrencyLimit,
    Server,
    configure_logging,
    raise_open_files_limit,
    run_on_best_loop,
)
from ._reload import TARGET_ENV
from ._reload import app as reload_app

__all__ = ["add_parser", "reloaded_app", "run"]

logger = logging.getLogger("modal_fastapi_kit")

LIMIT_ENV = "MFK_SERVE_LIMIT_CONCURRENCY"  # --limit-concurrency, for --reload's fresh processes

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
        "as on Modal. It runs on uvloop and httptools when installed; what it does not defend "
        "against (slow clients) is in docs/production.md.",
    )
    parser.add_argument("target", metavar="FILE.py[:Class]", help="file holding the class")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="one line per API request: method, route, status, request id, time in queue, "
        "batch size, model time",
    )
    parser.add_argument(
        "--log-format", choices=["text", "json"], default="text", help="the kit's log lines"
    )
    parser.add_argument(
        "--limit-concurrency",
        type=_at_least_one,
        metavar="N",
        help="requests at once before answering 503 with code overloaded and Retry-After: 1 "
        "(default: no limit but the one on connections, the open-file limit raised to its "
        f"maximum less {RESERVED_FILES}, over which a connection is answered a plain 503)",
    )
    parser.add_argument(
        "--timeout-keep-alive",
        type=int,
        default=5,
        help="seconds an idle keep-alive connection stays open (default 5)",
    )
    parser.add_argument(
        "--backlog", type=int, default=2048, help="connections waiting to be accepted"
    )
    parser.add_argument(
        "--reload",
        action="store_true",
        help="restart when a .py file in the service file's folder changes (development: "
        "each restart loads the model again)",
    )
    parser.add_argument(
        "--proxy-headers",
        metavar="ADDRESSES",
        help="trust X-Forwarded-For/-Proto from these comma-separated proxy addresses (e.g. "
        "127.0.0.1 for a proxy on this host); off by default, as the kit's origin lock "
        "handles forwarded headers for its edges",
    )
    parser.add_argument(
        "--max-header-bytes",
        type=int,
        help="refuse request headers over this size (uses the h11 parser, which has this "
        "limit; httptools has none)",
    )
    parser.set_defaults(run=run)


def _at_least_one(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of requests: give 1 or more")
    return number


def run(args: argparse.Namespace) -> int:
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", OPENMP_SPIN_COUNT)
    configure_logging(args.log_level, access=args.access_log, as_json=args.log_format == "json")
    files = raise_open_files_limit()
    began = time.perf_counter()
    spec = service_spec(load_service(args.target))
    logger.info("imported %s in %.2fs", args.target, time.perf_counter() - began)
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_level": args.log_level,
        "access_log": False,  # the kit's --access-log says more (queue, batch, model times)
        "lifespan": "on",
        # A request never waits past its deadline; a stream or a stuck connection that
        # outlives it is cut, so SIGTERM ends the process in bounded time.
        "timeout_graceful_shutdown": math.ceil(spec.config.request_timeout) + SHUTDOWN_GRACE,
        # Connections only: the limit on requests is the kit's, whose 503 is the kit's JSON.
        "limit_concurrency": files.connection_limit(),
        "timeout_keep_alive": args.timeout_keep_alive,
        "backlog": args.backlog,
        "proxy_headers": args.proxy_headers is not None,
        "forwarded_allow_ips": args.proxy_headers,
    }
    if args.max_header_bytes is not None:
        options.update(http="h11", h11_max_incomplete_event_size=args.max_header_bytes)
    if args.reload:
        return _serve_reloading(args.target, options, args.limit_concurrency)
    router = service_router(spec)
    server = Server(
        uvicorn.Config(_limited(service_app(spec, router), args.limit_concurrency), **options)
    )
    code = run_on_best_loop(_serve(server, router.backend, spec.name))
    if signal.SIGINT in server.signals:
        raise KeyboardInterrupt  # Ctrl-C: the CLI exits 130, as a shell expects
    return code


def _limited(app: FastAPI, limit: int | None) -> FastAPI:
    """``app`` answering at most ``limit`` requests at once (``None``: no limit): the limit is
    its outermost middleware, inside only the service's CORS (``ServiceApp``), so a preflight
    is not counted and a page can read the 503."""
    if limit is not None:
        app.add_middleware(ConcurrencyLimit, limit=limit)
    return app


def reloaded_app() -> FastAPI:
    """The app of each process that ``--reload`` starts: ``_reload.app`` under the limit
    that ``mfk serve`` put in the environment."""
    limit = os.environ.get(LIMIT_ENV)
    return _limited(reload_app(), int(limit) if limit else None)


def _serve_reloading(target: str, options: dict[str, Any], limit: int | None) -> int:
    """uvicorn's reloader: a fresh process (and a fresh load) whenever a ``.py`` file next to
    the service file changes; the app comes from ``reloaded_app``."""
    path, _, name = target.partition(":")
    folder = Path(path).resolve().parent
    os.environ[TARGET_ENV] = str(Path(path).resolve()) + (f":{name}" if name else "")
    os.environ[LIMIT_ENV] = "" if limit is None else str(limit)
    uvicorn.run(
        "modal_fastapi_kit.cli._serve:reloaded_app",
        factory=True,
        reload=True,
        reload_dirs=[str(folder)],
        **options,
    )
    return 0


async def _serve(server: Server, backend: Backend, name: str) -> int:
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
