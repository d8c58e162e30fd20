"""``Watchdog``: every model call goes through it, so that a stuck one is noticed.

A call that runs past ``stall_timeout`` marks the model stalled: the calls waiting on the
model fail with ``ModelStalled`` at once, new calls fail before they start, and the
listeners hear it (the backend fails its queue; Modal's container stops taking inputs). If
the stuck call ever returns, the model is marked healthy again. A call may bring a bound of
its own (a job's ``run_timeout``, far longer than a request's): it is stuck only past that.
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
        # waiting -> (start on the loop's clock for an async call, its own bound or None)
        self._calls: dict[asyncio.Future[Any], tuple[float | None, float | None]] = {}
        self._listeners: list[Callable[[ModelStalled], None]] = []
        self._task: asyncio.Task[None] | None = None

    def add_listener(self, listener: Callable[[ModelStalled], None]) -> None:
        self._listeners.append(listener)

    async def call(self, fn: Callable[..., Any], *args: Any, bound: float | None = None) -> Any:
        """Call the model once (sync on the thread, async on the loop), watched for stalls:
        past ``bound`` seconds when given, else past the watchdog's own bound."""
        if self.stalled is not None:
            raise self.stalled
        if not self.asynchronous:
            waiting: asyncio.Future[Any] = self.thread.call(fn, *args, bound=bound)
            self._calls[waiting] = (None, bound)
            try:
                return await waiting
            finally:
                del self._calls[waiting]
        loop = asyncio.get_running_loop()
        waiting = loop.create_future()
        task = asyncio.ensure_future(fn(*args))
        task.add_done_callback(lambda t: _copy_result(t, waiting))
        self._calls[waiting] = (loop.time(), bound)
        try:
            return await waiting
        finally:
            del self._calls[waiting]
            if not task.done():
                task.cancel()  # the watchdog failed it, or the caller left

    def start(self, bound: float | None, name: str, *, longest: float | None = None) -> None:
        """Check every call against ``bound`` seconds (``None``: never) from now on; a call
        with its own bound against that one. ``longest``: the longest bound a call will bring
        (the watch runs for those calls even when ``bound`` is ``None``)."""
        if (bound is None and longest is None) or self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(
            self._watch(bound, min(b for b in (bound, longest) if b is not None)),
            name=f"modal_fastapi_kit.watchdog[{name}]",
        )

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _watch(self, bound: float | None, shortest: float) -> None:
        interval = min(1.0, shortest / 4)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            overdue = self._overdue(loop, bound)
            if overdue is not None and self.stalled is None:
                self._stall(*overdue)
            elif self.stalled is not None and overdue is None:
                logger.warning("%s: the stuck call returned; serving again", self.label)
                self.stalled = None

    def _overdue(
        self, loop: asyncio.AbstractEventLoop, default: float | None
    ) -> tuple[float, float, bool] | None:
        """``(seconds running, bound, whether it is a call's own bound)`` of a model call in
        progress past its bound, or None."""
        found: list[tuple[float, float | None]] = []
        busy = self.thread.busy  # one read: the start and the bound of the same call
        if busy is not None:
            found.append((time.monotonic() - busy[0], busy[1]))
        now = loop.time()
        for started, own in self._calls.values():
            if started is not None:
                found.append((now - started, own))
        for running, own in found:
            limit = default if own is None else own
            if limit is not None and running > limit:
                return running, limit, own is not None
        return None

    def _stall(self, running: float, bound: float, own: bool) -> None:
        option = "the job's run_timeout" if own else "stall_timeout"
        self.stalled = error = ModelStalled(
            f"{self.label} has been running for {running:.0f}s, past "
            f"{option}={bound:g}s; the model is stuck and this server cannot serve until "
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
