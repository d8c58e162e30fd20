"""``InferenceThread``: the one thread a model's sync hooks run on.

Every sync hook of a service (``load``, ``predict_batch``, each step of a generator,
``unload``) runs here, one call at a time, so the model is never entered from two threads at
once and the event loop stays free while it works. The thread is a daemon: a call that never
returns cannot keep the process alive after shutdown, and ``busy`` lets a watchdog on
the event loop see how long the current call has run.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["InferenceThread"]

T = TypeVar("T")

_Job = tuple[
    float | None,
    contextvars.Context,
    Callable[..., Any],
    tuple[Any, ...],
    asyncio.AbstractEventLoop,
    "asyncio.Future[Any]",
]


class InferenceThread:
    """Run callables on one daemon thread; each call answers an asyncio future on its loop."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._started = False
        # (time.monotonic() when the current call began, the bound it was given), in one
        # attribute so that a watchdog never reads the start of one call with another's bound
        self.busy: tuple[float, float | None] | None = None

    @property
    def name(self) -> str:
        return self._thread.name

    @property
    def busy_since(self) -> float | None:
        """``time.monotonic()`` when the call in progress began; None when idle."""
        busy = self.busy
        return None if busy is None else busy[0]

    def call(
        self, fn: Callable[..., T], *args: Any, bound: float | None = None
    ) -> asyncio.Future[T]:
        """Queue ``fn(*args)``; the future (on the running loop) gets its result or exception.
        It runs in a copy of the caller's context (``contextvars``), as ``asyncio.to_thread``
        would run it. A future that is done (cancelled or failed) before the call starts
        skips the call; a call already running goes on. ``bound``: the seconds this call may
        run before a watchdog calls it stuck (None: the watchdog's own), published with its
        start in ``busy``.
        """
        if not self._started:
            self._started = True
            self._thread.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((bound, contextvars.copy_context(), fn, args, loop, future))
        return future

    def close(self) -> None:
        """Let the thread end after the calls already queued."""
        if self._started:
            self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            bound, context, fn, args, loop, future = job
            if future.done():  # withdrawn, or failed by the watchdog while it waited
                continue
            self.busy = (time.monotonic(), bound)
            try:
                result, error = context.run(fn, *args), None
            except BaseException as exc:  # handed to the caller, whatever it is
                result, error = None, exc
            # Not busy before the caller hears the answer: a caller that stops the service
            # right after it must not find the thread still "busy" in a call that returned.
            self.busy = None
            _answer(loop, future, result, error)
            del (
                job,
                context,
                fn,
                args,
                future,
                result,
                error,
            )  # drop references before waiting again


def _answer(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    result: Any,
    error: BaseException | None,
) -> None:
    def settle() -> None:
        if future.done():  # cancelled, or failed by the watchdog meanwhile
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for this answer
        loop.call_soon_threadsafe(settle)
