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
- Each item gets its own outcome: a result, or the error for that item alone.
- ``lower_cap`` lowers ``max_batch_size`` for good (the runtime calls it when a batch ran out
  of GPU memory); batches formed after it hold at most that many items.
- An item whose future is done before its batch forms (its client left, or its deadline
  passed and the caller gave up) is withdrawn: it stops counting against ``max_queue_size``
  at once and is never computed.
- A streaming batch hands out each item's stream when its generator opens and keeps its
  run slot until the generator is done with the model.
- ``JoiningBatcher`` (streams that join a running batch): there is one batch, always
  running while it holds items; between two of its steps the items that ended leave it and
  queued items join it, up to ``max_batch_size``. ``wait_ms`` does not apply: an item that
  arrives while the batch is busy joins at the next step boundary.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from ..exceptions import (
    DeadlineExceeded,
    ErrorCode,
    NotReadyError,
    PredictError,
    QueueFullError,
    ServingError,
)
from .recorder import NO_RECORDER, Recorder, Trace
from .streams import ItemStream, StreamBatch

__all__ = ["Batcher", "JoiningBatcher", "RunBatch", "Steps"]

logger = logging.getLogger("modal_fastapi_kit")

In = TypeVar("In")

# What a batch run answers: one outcome per item (a result, or that item's exception), or the
# streams of a streaming batch.
RunBatch = Callable[[list[In]], Awaitable["Sequence[Any] | StreamBatch"]]


class _Pending(Generic[In]):
    __slots__ = ("batcher", "deadline", "enqueued", "future", "item", "queued", "trace")

    def __init__(
        self,
        batcher: Batcher[In],
        item: In,
        future: asyncio.Future[Any],
        now: float,
        deadline: float,
        trace: Trace | None,
    ) -> None:
        self.batcher = batcher
        self.trace = trace
        self.item = item
        self.future = future
        self.enqueued = now
        self.deadline = deadline
        self.queued = True

    def withdrawn(self, _: object) -> None:
        """Done callback: a future settled while queued no longer holds a place."""
        if self.queued:
            self.queued = False
            self.batcher._live -= 1
            self.batcher.recorder.withdrawn()


class Batcher(Generic[In]):
    """Queue items and run them through ``run_batch`` in batches.

    ``run_batch`` gets a list of items and answers one outcome per item in the same order: a
    value, or an exception for that item alone (or a ``StreamBatch``). ``max_in_flight``
    batches may run at once (1 for a model on one inference thread).
    """

    def __init__(
        self,
        run_batch: RunBatch[In],
        *,
        max_batch_size: int,
        wait_ms: float,
        max_queue_size: int,
        max_in_flight: int = 1,
        recorder: Recorder = NO_RECORDER,
    ) -> None:
        self._run_batch = run_batch
        self.recorder = recorder
        self.max_batch_size = max_batch_size
        self.wait_s = wait_ms / 1000.0
        self.max_queue_size = max_queue_size
        self._slots = asyncio.Semaphore(max_in_flight)
        self._queue: collections.deque[_Pending[In]] = collections.deque()
        self._live = 0  # queued items not withdrawn
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

    async def stop(self, timeout: float | None = None) -> None:
        """Stop taking items, run what is queued, and wait for running batches.

        ``timeout`` bounds the wait for the queued and running work; what is left is then
        failed with "shutting down" and its tasks are cancelled.
        """
        self._closing = True
        self._wakeup.set()
        loop = asyncio.get_running_loop()
        ends = None if timeout is None else loop.time() + timeout
        worker, self._worker = self._worker, None
        if worker is not None:
            await asyncio.wait({worker}, timeout=_left(loop, ends))
            if not worker.done():
                worker.cancel()
                self.fail_queued(
                    NotReadyError(
                        "the server is shutting down", code=ErrorCode.SHUTTING_DOWN, retry_after=1
                    )
                )
        if self._running:
            _, late = await asyncio.wait(set(self._running), timeout=_left(loop, ends))
            for task in late:
                task.cancel()

    def lower_cap(self, size: int) -> None:
        """Form batches of at most ``size`` items from now on."""
        self.max_batch_size = max(1, min(self.max_batch_size, size))

    @property
    def queue_size(self) -> int:
        """Items waiting for a batch (withdrawn ones do not count)."""
        return self._live

    def fail_queued(self, error: ServingError) -> None:
        """Answer every queued item with ``error`` now (the model cannot take them)."""
        while self._queue:
            pending = self._queue.popleft()
            if pending.queued:
                pending.queued = False
                self._live -= 1
            if not pending.future.done():
                pending.future.set_exception(error)

    # -- submitting ---------------------------------------------------------------------------

    def submit(
        self, item: In, *, deadline: float, trace: Trace | None = None
    ) -> asyncio.Future[Any]:
        """Queue ``item``; the returned future resolves to its outcome.

        ``deadline`` is on the event loop's clock (``loop.time()``). Cancel the future to
        withdraw the item; a withdrawn item frees its place at once and is never computed.
        """
        if self._closing:
            raise NotReadyError(
                "the server is shutting down", code=ErrorCode.SHUTTING_DOWN, retry_after=1
            )
        if self._live >= self.max_queue_size:
            raise QueueFullError(
                f"the queue is full ({self.max_queue_size} requests waiting); retry shortly"
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        pending = _Pending(self, item, future, loop.time(), deadline, trace)
        future.add_done_callback(pending.withdrawn)
        self._live += 1
        queue = self._queue
        if len(queue) > 2 * self._live + 64:  # mostly withdrawn: drop them
            self._queue = queue = collections.deque(p for p in queue if p.queued)
        queue.append(pending)
        if not self._wakeup.is_set():
            self._wakeup.set()
        return future

    # -- the worker ---------------------------------------------------------------------------

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._live:
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
        while self._live and self._live < target and not self._closing:
            oldest = next((p for p in self._queue if p.queued), None)
            if oldest is None:
                return
            remaining = oldest.enqueued + self.wait_s - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            timer = loop.call_later(remaining, self._wakeup.set)
            try:
                await self._wakeup.wait()
            finally:
                timer.cancel()

    def _take(self, now: float, limit: int | None = None) -> list[_Pending[In]]:
        batch: list[_Pending[In]] = []
        queue = self._queue
        most = self.max_batch_size if limit is None else limit
        while queue and len(batch) < most:
            pending = queue.popleft()
            if not pending.queued:
                continue  # withdrawn: the client left or gave up
            pending.queued = False
            self._live -= 1
            if pending.deadline <= now:
                pending.future.set_exception(
                    DeadlineExceeded("the request's deadline passed while it was queued")
                )
                self.recorder.withdrawn()
                continue
            self.recorder.waited(now - pending.enqueued)
            if pending.trace is not None:
                pending.trace.queued(now - pending.enqueued)
            batch.append(pending)
        return batch

    async def _run(self, batch: list[_Pending[In]]) -> None:
        released = False
        began = time.perf_counter()
        try:
            try:
                outcomes = await self._run_batch([p.item for p in batch])
            except asyncio.CancelledError:  # stop() gave up on it
                _deliver(
                    batch,
                    [NotReadyError("the server is shutting down", code=ErrorCode.SHUTTING_DOWN)]
                    * len(batch),
                )
                raise
            except Exception as exc:  # run_batch answers per item; this is a last resort
                logger.error("a batch of %d failed as a whole", len(batch), exc_info=exc)
                error = PredictError(f"the batch failed: {type(exc).__name__}")
                error.__cause__ = exc
                outcomes = [error for _ in batch]
            if isinstance(outcomes, StreamBatch):
                _deliver(batch, outcomes.streams)
                await outcomes.done  # the generator holds the model until it is done
                self._ran(batch, time.perf_counter() - began)
                return
            self._ran(batch, time.perf_counter() - began)
            if len(outcomes) != len(batch):
                error = PredictError(
                    f"the batch returned {len(outcomes)} results for {len(batch)} items"
                )
                outcomes = [error for _ in batch]
            # Free the slot and yield once before answering: the worker, woken first, hands
            # the next batch to the model, and only then do this batch's callers resume to
            # write their answers. The other order leaves the model idle while they do.
            released = True
            self._slots.release()
            try:
                await asyncio.sleep(0)
            finally:
                _deliver(batch, outcomes)
        finally:
            self.batches_run += 1
            if not released:
                self._slots.release()

    def _ran(self, batch: list[_Pending[In]], seconds: float) -> None:
        self.recorder.batch(len(batch), seconds)
        for pending in batch:
            if pending.trace is not None:
                pending.trace.ran(len(batch), seconds)


class Steps(Protocol):
    """A running batch that items join between its steps (``_core.joining.StepLoop``)."""

    @property
    def active(self) -> int:
        """Items holding a slot now."""
        ...

    async def join(self, items: list[Any]) -> Sequence[ItemStream]:
        """Add ``items``; one stream each, in order."""
        ...

    async def step(self) -> None:
        """Leave the items that ended, then one step for the rest (none: no model call)."""
        ...

    def fail(self, error: ServingError) -> None:
        """End every item's stream with ``error``."""
        ...


async def _no_batches(items: list[Any]) -> list[Any]:
    raise RuntimeError("a JoiningBatcher runs no whole batches")  # pragma: no cover


class JoiningBatcher(Batcher[In]):
    """Queue items and admit them into ``steps``, a batch that runs step after step.

    Before each step the queued items join (oldest first) while the batch holds fewer than
    ``max_batch_size`` items; an item whose stream ended, failed or lost its reader leaves
    at the same boundary and frees its slot for the next one. Queue waits and deadlines are
    the same as for whole batches; the recorder hears each step's size from ``steps``.
    """

    def __init__(
        self,
        steps: Steps,
        *,
        max_batch_size: int,
        max_queue_size: int,
        recorder: Recorder = NO_RECORDER,
    ) -> None:
        super().__init__(
            _no_batches,
            max_batch_size=max_batch_size,
            wait_ms=0,
            max_queue_size=max_queue_size,
            recorder=recorder,
        )
        self.steps = steps

    async def _work(self) -> None:
        steps = self.steps
        loop = asyncio.get_running_loop()
        try:
            while True:
                free = self.max_batch_size - steps.active
                if self._live and free > 0:
                    batch = self._take(loop.time(), free)
                    if batch:
                        await self._join(batch)
                await steps.step()
                if steps.active or self._live:
                    continue
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
        except asyncio.CancelledError:  # stop() gave up waiting for the running streams
            steps.fail(NotReadyError("the server is shutting down", code=ErrorCode.SHUTTING_DOWN))
            raise

    async def _join(self, batch: list[_Pending[In]]) -> None:
        began = time.perf_counter()
        try:
            streams = await self.steps.join([p.item for p in batch])
        except asyncio.CancelledError:
            error = NotReadyError("the server is shutting down", code=ErrorCode.SHUTTING_DOWN)
            _deliver(batch, [error] * len(batch))
            raise
        seconds, beside = time.perf_counter() - began, self.steps.active
        for pending in batch:
            if pending.trace is not None:
                pending.trace.ran(beside, seconds)
        self.batches_run += 1
        _deliver(batch, streams)


def _left(loop: asyncio.AbstractEventLoop, ends: float | None) -> float | None:
    return None if ends is None else max(0.0, ends - loop.time())


def _deliver(batch: list[_Pending[Any]], outcomes: Sequence[Any]) -> None:
    for pending, outcome in zip(batch, outcomes, strict=True):
        future = pending.future
        if future.done():  # withdrawn while its batch ran
            if isinstance(outcome, ItemStream):
                outcome.close()  # nobody will read it: let the generator stop
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
