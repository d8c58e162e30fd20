"""``Watchdog``: every model call goes through it, so that a stuck one is noticed.

A call that runs past ``stall_timeout`` marks the model stalled: the calls waiting on the
model fail with ``ModelStalled`` at once, new calls fail before they start, and the
listeners hear it (the backend fails its queue; Modal's container stops taking inputs). If
the stuck call ever returns, the model is marked healthy again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from ..exceptions import ModelStalled
from .thread import InferenceThread

__all__ = ["Watchdog"]

logger = logging.getLogger("modal_fastapi_kit")


class Watchdog:
    """Watched calls of one model's hook named ``label``.

    Sync calls run on ``thread`` (``asynchronous=False``); async ones on the caller's loop.
    """

    def __init__(self, label: str, thread: InferenceThread, *, asynchronous: bool) -> None:
        self.label = label
        self.thread = thread
        self.asynchronous = asynchronous
        self.stalled: ModelStalled | None = None
        self._calls: dict[asyncio.Future[Any], float | None] = {}  # waiting -> async start
        self._listeners: list[Callable[[ModelStalled], None]] = []
        self._task: asyncio.Task[None] | None = None

    def add_listener(self, listener: Callable[[ModelStalled], None]) -> None:
        self._listeners.append(listener)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call the model once (sync on the thread, async on the loop), watched for stalls."""
        if self.stalled is not None:
            raise self.stalled
        if not self.asynchronous:
            waiting: asyncio.Future[Any] = self.thread.call(fn, *args)
            self._calls[waiting] = None
            try:
                return await waiting
            finally:
                del self._calls[waiting]
        loop = asyncio.get_running_loop()
        waiting = loop.create_future()
        task = asyncio.ensure_future(fn(*args))
        task.add_done_callback(lambda t: _copy_result(t, waiting))
        self._calls[waiting] = loop.time()
        try:
            return await waiting
        finally:
            del self._calls[waiting]
            if not task.done():
                task.cancel()  # the watchdog failed it, or the caller left

    def start(self, bound: float | None, name: str) -> None:
        """Check every call against ``bound`` seconds (``None``: never) from now on."""
        if bound is None or self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(
            self._watch(bound), name=f"modal_fastapi_kit.watchdog[{name}]"
        )

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _watch(self, bound: float) -> None:
        interval = min(1.0, bound / 4)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            running = self._running_for(loop)
            if running is not None and running > bound and self.stalled is None:
                self._stall(running, bound)
            elif self.stalled is not None and (running is None or running <= bound):
                logger.warning("%s: the stuck call returned; serving again", self.label)
                self.stalled = None

    def _running_for(self, loop: asyncio.AbstractEventLoop) -> float | None:
        """How long the oldest model call in progress has run, in seconds, or None."""
        since = self.thread.busy_since
        oldest = None if since is None else time.monotonic() - since
        now = loop.time()
        for started in self._calls.values():
            if started is not None and (oldest is None or now - started > oldest):
                oldest = now - started
        return oldest

    def _stall(self, running: float, bound: float) -> None:
        self.stalled = error = ModelStalled(
            f"{self.label} has been running for {running:.0f}s, past "
            f"stall_timeout={bound:g}s; the model is stuck and this server cannot serve until "
            "it returns (restart it)"
        )
        logger.error("%s", error)
        for waiting in list(self._calls):
            if not waiting.done():
                waiting.set_exception(error)
        for listener in self._listeners:
            try:
                listener(error)
            except Exception:
                logger.exception("a stall listener of %s raised", self.label)


def _copy_result(task: asyncio.Task[Any], waiting: asyncio.Future[Any]) -> None:
    if waiting.done():
        if not task.cancelled():
            task.exception()  # retrieved: the caller already has its answer
        return
    if task.cancelled():
        waiting.cancel()
    elif (exc := task.exception()) is not None:
        waiting.set_exception(exc)
    else:
        waiting.set_result(task.result())
