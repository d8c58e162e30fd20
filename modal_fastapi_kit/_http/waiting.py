"""Submit a request's items to the backend and wait for their outcomes, watching the client.

Every route that hands work to the backend waits the same way: until every item has its
outcome, the request's deadline passes, or the client disconnects. The last two cancel the
items' futures, which withdraws the ones still queued, so the model never computes an answer
nobody waits for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.types import Receive

from .._backends.base import Backend
from .._core.recorder import Trace
from ..exceptions import DeadlineExceeded

__all__ = ["TRACE_KEY", "ClientGone", "outcomes", "wait_for_disconnect"]

TRACE_KEY = "mfk.trace"  # the request's Trace in its ASGI scope, when it is access-logged


class ClientGone(Exception):
    """The client disconnected before its answer was ready; nobody will read one."""


async def outcomes(
    backend: Backend,
    request: Request,
    items: Sequence[Any],
    deadline: float,
    late: DeadlineExceeded,
) -> list[Any]:
    """The outcome of each item, in order.

    Raises what ``backend.submit`` raised (queue full, not ready), ``ClientGone``, ``late`` at
    the deadline, or the first item's failure; in every case the other items are withdrawn.
    """
    futures: list[asyncio.Future[Any]] = []
    trace: Trace | None = request.scope.get(TRACE_KEY)
    try:
        for item in items:
            futures.append(backend.submit(item, deadline=deadline, trace=trace))
    except BaseException:
        _cancel(futures)
        raise
    loop = asyncio.get_running_loop()
    everything = futures[0] if len(futures) == 1 else asyncio.gather(*futures)
    watcher = loop.create_task(wait_for_disconnect(request.receive))
    try:
        await _first_done(loop, everything, watcher, deadline)
    finally:
        watcher.cancel()
    if not everything.done():
        _cancel(futures)
        if watcher.done() and not watcher.cancelled():
            raise ClientGone
        raise late
    error = everything.exception()
    if error is not None:
        _cancel(futures)
        raise error
    return [future.result() for future in futures]


async def wait_for_disconnect(receive: Receive) -> None:
    """Return when the client disconnects (the request body has been read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _cancel(futures: list[asyncio.Future[Any]]) -> None:
    for future in futures:
        future.cancel()


async def _first_done(
    loop: asyncio.AbstractEventLoop,
    first: asyncio.Future[Any],
    second: asyncio.Future[Any],
    deadline: float,
) -> None:
    """Return when either future is done or the loop's clock reaches ``deadline``.

    ``asyncio.wait(..., return_when=FIRST_COMPLETED)`` with a timeout, minus the sets and
    the bookkeeping it needs for any number of futures: this runs once per request.
    """
    waiter = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    first.add_done_callback(wake)
    second.add_done_callback(wake)
    timer = loop.call_at(deadline, wake)
    try:
        await waiter
    finally:
        timer.cancel()
        first.remove_done_callback(wake)
        second.remove_done_callback(wake)
