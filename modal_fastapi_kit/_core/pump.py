"""``StreamPump``: steps a generator ``predict`` / ``predict_batch`` and feeds item streams.

``predict(item)`` yields one chunk per step for its item; ``predict_batch(items)`` yields per
step a list with, for each item, a chunk, ``None`` (nothing this step), ``END`` (that item is
done) or an exception (that item fails). Each step is a watched model call; a stream whose
reader left stops the generator once every stream of its batch is closed or done.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..exceptions import PredictError, ServingError
from .outcomes import Outcomes
from .recorder import NO_RECORDER, Recorder
from .spec import PredictHook
from .streams import END, ItemStream, StreamBatch
from .thread import InferenceThread
from .watchdog import Watchdog

__all__ = ["StreamPump"]

logger = logging.getLogger("modal_fastapi_kit")


class _StepDone:
    """What a sync generator step returns at its end (StopIteration cannot cross a future)."""


_STEP_DONE = _StepDone()


class StreamPump:
    """Opens streams on a generator hook; its steps run through ``watchdog``."""

    def __init__(
        self,
        hook: PredictHook,
        outcomes: Outcomes,
        watchdog: Watchdog,
        thread: InferenceThread,
        recorder: Recorder = NO_RECORDER,
    ) -> None:
        self.hook = hook
        self.outcomes = outcomes
        self.watchdog = watchdog
        self.thread = thread
        self.recorder = recorder

    def open(self, fn: Any, items: list[Any]) -> StreamBatch:
        """Start the generator ``fn`` for ``items``; each item's chunks go to its own stream."""
        streams = [ItemStream() for _ in items]
        if self.watchdog.stalled is not None:
            for stream in streams:
                stream.finish(self.watchdog.stalled)
            return StreamBatch(list(streams), done=_done_future())
        loop = asyncio.get_running_loop()
        if self.hook.batch:
            pumps = [loop.create_task(self._pump(fn(items), streams))]
        else:
            pumps = [
                loop.create_task(self._pump(fn(item), [stream]))
                for item, stream in zip(items, streams, strict=True)
            ]
        done = asyncio.gather(*pumps)
        done.add_done_callback(_seen)  # cancelled at shutdown with nobody waiting: no warning
        return StreamBatch(list(streams), done=done)

    async def _pump(self, generator: Any, streams: list[ItemStream]) -> None:
        batch = self.hook.batch
        try:
            while not all(s.closed or s.finished for s in streams):
                try:
                    step = await self._step(generator)
                except Exception as exc:
                    error = self.outcomes.error(exc, len(streams))
                    self.recorder.failed(type(error).__name__, len(streams))
                    for stream in streams:
                        stream.finish(error)
                    return
                if step is _STEP_DONE:
                    return
                if not batch:
                    self._deliver(streams[0], step)
                elif isinstance(step, list | tuple) and len(step) == len(streams):
                    for stream, chunk in zip(streams, step, strict=True):
                        self._deliver(stream, chunk)
                else:
                    error = PredictError(
                        f"{self.outcomes.label} yielded {type(step).__name__} for a batch of "
                        f"{len(streams)}; yield a list with one chunk (or None, or END) per item"
                    )
                    for stream in streams:
                        stream.finish(error)
                    return
        finally:
            for stream in streams:
                stream.finish()
            await self._close(generator)

    def _deliver(self, stream: ItemStream, chunk: Any) -> None:
        if chunk is None or stream.finished or stream.closed:
            return
        if chunk is END:
            stream.finish()
            return
        outcome = self.outcomes.coerce(chunk)
        if isinstance(outcome, ServingError):
            self.recorder.failed(type(outcome).__name__, 1)
            stream.finish(outcome)
        else:
            self.recorder.chunk()
            stream.put(outcome)

    async def _step(self, generator: Any) -> Any:
        if self.hook.asynchronous:
            try:
                return await self.watchdog.call(generator.__anext__)
            except StopAsyncIteration:
                return _STEP_DONE
        return await self.watchdog.call(next, generator, _STEP_DONE)

    async def _close(self, generator: Any) -> None:
        try:
            if self.hook.asynchronous:
                await generator.aclose()
            elif self.watchdog.stalled is None:  # a stuck thread would never get to it
                await self.thread.call(generator.close)
        except Exception:
            logger.exception("%s: closing its generator raised", self.outcomes.label)


def _seen(done: asyncio.Future[Any]) -> None:
    if not done.cancelled():
        done.exception()


def _done_future() -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future
