"""Async dynamic batcher: a bounded queue drained in batches by one worker task.

Batch-forming policy:

- Batches form while the model is busy: the worker takes the next batch only when a run
  slot is free, so everything that queued during the previous run goes together.
- With a free slot, the worker dispatches as soon as the queue holds as many items as the
  previous batch had (capped at ``max_batch_size``), or when the oldest queued item has
  waited ``wait_ms``, whichever comes first. After a lone request (the model was idle) the
  target is one, so a request on an idle model goes at once: batching costs no latency at
  low load, and at high load the target follows the load.
- A finished batch frees its run slot before its results are delivered, so the next batch
  is already on its way to the model while the event loop writes the previous answers.
- An item whose future is already done (its client went away, or its deadline passed and
  the caller gave up) is dropped when the batch forms and never computed.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from ._errors import DeadlineExceeded, NotReadyError, PredictError, QueueFullError

__all__ = ["Batcher"]

logger = logging.getLogger("modal_fastapi_kit")

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass(slots=True)
class _Pending(Generic[In, Out]):
    item: In
    future: asyncio.Future[Out]
    enqueued: float
    deadline: float


class Batcher(Generic[In, Out]):
    """Queue items and run them through ``run_batch`` in batches.

    ``run_batch`` gets a list of items and returns a list of results in the same order.
    ``max_in_flight`` batches may run at once (1 for a model on one inference thread).
    """

    def __init__(
        self,
        run_batch: Callable[[list[In]], Awaitable[list[Out]]],
        *,
        max_batch_size: int,
        wait_ms: float,
        max_queue_size: int,
        max_in_flight: int = 1,
    ) -> None:
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.wait_s = wait_ms / 1000.0
        self.max_queue_size = max_queue_size
        self._slots = asyncio.Semaphore(max_in_flight)
        self._queue: collections.deque[_Pending[In, Out]] = collections.deque()
        self._wakeup = asyncio.Event()
        self._last_batch_size = 1
        self._closing = False
        self._worker: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self.batches_run = 0

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(
                self._work(), name="modal_fastapi_kit.batcher"
            )

    async def stop(self) -> None:
        """Stop taking items, run what is queued, and wait for running batches."""
        self._closing = True
        self._wakeup.set()
        if self._worker is not None:
            await self._worker
            self._worker = None
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    @property
    def queue_size(self) -> int:
        return len(self._queue)

    # -- submitting ---------------------------------------------------------------------------

    def submit(self, item: In, *, deadline: float) -> asyncio.Future[Out]:
        """Queue ``item``; the returned future resolves to its result.

        ``deadline`` is on the event loop's clock (``loop.time()``). Cancel the future to
        withdraw the item; a withdrawn item is never computed.
        """
        if self._closing:
            raise NotReadyError("the server is shutting down", retry_after=1)
        if len(self._queue) >= self.max_queue_size:
            raise QueueFullError(
                f"the queue is full ({self.max_queue_size} requests waiting); retry shortly"
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Out] = loop.create_future()
        self._queue.append(_Pending(item, future, loop.time(), deadline))
        if not self._wakeup.is_set():
            self._wakeup.set()
        return future

    # -- the worker ---------------------------------------------------------------------------

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._slots.acquire()
            await self._fill(loop)
            batch = self._take(loop.time())
            if not batch:
                self._slots.release()
                continue
            self._last_batch_size = len(batch)
            task = loop.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _fill(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait, at most until the oldest item is ``wait_ms`` old, for the batch target."""
        target = min(self._last_batch_size, self.max_batch_size)
        while self._queue and len(self._queue) < target and not self._closing:
            remaining = self._queue[0].enqueued + self.wait_s - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            timer = loop.call_later(remaining, self._wakeup.set)
            try:
                await self._wakeup.wait()
            finally:
                timer.cancel()

    def _take(self, now: float) -> list[_Pending[In, Out]]:
        batch: list[_Pending[In, Out]] = []
        queue = self._queue
        while queue and len(batch) < self.max_batch_size:
            pending = queue.popleft()
            if pending.future.done():
                continue  # withdrawn: the client left or gave up
            if pending.deadline <= now:
                pending.future.set_exception(
                    DeadlineExceeded("the request's deadline passed while it was queued")
                )
                continue
            batch.append(pending)
        return batch

    async def _run(self, batch: list[_Pending[In, Out]]) -> None:
        released = False
        try:
            try:
                results = await self._run_batch([p.item for p in batch])
                if len(results) != len(batch):
                    raise PredictError(
                        f"predict_batch returned {len(results)} results for {len(batch)} "
                        "items; return exactly one result per item, in order"
                    )
            except Exception as exc:
                error = exc if isinstance(exc, PredictError) else PredictError(repr(exc))
                if error is not exc:
                    error.__cause__ = exc
                logger.error("predict failed for a batch of %d", len(batch), exc_info=exc)
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(error)
                return
            # Free the slot and yield once before answering: the worker, woken first, hands
            # the next batch to the model, and only then do this batch's callers resume to
            # write their answers. The other order leaves the model idle while they do.
            released = True
            self._slots.release()
            try:
                await asyncio.sleep(0)
            finally:
                for p, result in zip(batch, results, strict=True):
                    if not p.future.done():
                        p.future.set_result(result)
        finally:
            self.batches_run += 1
            if not released:
                self._slots.release()
