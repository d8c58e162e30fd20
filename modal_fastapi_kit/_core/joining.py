"""``StepLoop``: the step loop of a service whose streams join a running batch.

The service keeps the state of the items it decodes together (a KV cache, say); the kit owns
the loop and calls three hooks, one call at a time, each watched for stalls:

- ``join(items)``: ``items`` maps a key (an int the kit chose) to a request; the service adds
  them to its state and may answer, per key, a first outcome (as ``step`` does);
- ``step()``: one step for every item joined and not left; it answers a mapping from key to
  that item's outcome this step: a chunk, ``None`` (or no entry) for nothing, ``END`` when
  the item is done, or an exception that fails that item alone;
- ``leave(keys)``: forget these items: their stream ended or failed, or their reader left.
  Every key ``join`` got is left exactly once, at the next step boundary.

The batcher (``JoiningBatcher``) admits queued items between steps, up to the batch cap. A
``join`` or ``step`` that raises fails the items it was called for; one out of GPU memory
also halves the batch cap.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..exceptions import ModelStalled, PredictError, ServingError
from .memory import free_cache, out_of_memory
from .outcomes import Outcomes
from .recorder import NO_RECORDER, Recorder
from .streams import END, ItemStream
from .watchdog import Watchdog

__all__ = ["StepLoop"]

logger = logging.getLogger("modal_fastapi_kit")


class StepLoop:
    """The items in a running batch: each one's stream, and the hooks that step them.

    ``instance`` answers the service instance (built when the model loads);
    ``on_out_of_memory(size)`` hears that a step of ``size`` items ran out of GPU memory.
    """

    def __init__(
        self,
        instance: Callable[[], Any],
        outcomes: Outcomes,
        watchdog: Watchdog,
        *,
        recorder: Recorder = NO_RECORDER,
        on_out_of_memory: Callable[[int], None] | None = None,
    ) -> None:
        self._instance = instance
        self.outcomes = outcomes
        self.watchdog = watchdog
        self.recorder = recorder
        self._on_out_of_memory = on_out_of_memory
        self._streams: dict[int, ItemStream] = {}  # joined and not left yet
        self._leaving: list[int] = []  # ended, to be left at the next boundary
        self._keys = itertools.count()

    @property
    def active(self) -> int:
        """Items that hold a slot: joined, and their stream neither ended nor closed."""
        return sum(1 for s in self._streams.values() if not (s.finished or s.closed))

    async def join(self, items: list[Any]) -> list[ItemStream]:
        """Add ``items`` to the batch; each one's stream, with its first outcome if ``join``
        answered one (a failed join's streams hold its error)."""
        await self._leave()
        keys = [next(self._keys) for _ in items]
        streams = [ItemStream() for _ in items]
        self._streams.update(zip(keys, streams, strict=True))
        try:
            answer = await self._call("join", dict(zip(keys, items, strict=True)))
        except Exception as exc:
            self._fail(keys, exc)
        else:
            self._deliver(answer, keys, "join")
        return streams

    async def step(self) -> None:
        """Leave the items that ended, take one step for the others (if any), and leave the
        items that ended in it."""
        await self._leave()
        live = [key for key, stream in self._streams.items() if _live(stream)]
        if not live:
            return
        began = time.perf_counter()
        try:
            answer = await self._call("step")
        except Exception as exc:
            self._fail(live, exc)
        else:
            self.recorder.batch(len(live), time.perf_counter() - began)
            self._deliver(answer, live, "step")
        await self._leave()

    def fail(self, error: ServingError) -> None:
        """End every live stream with ``error`` (the server is shutting down)."""
        for stream in self._streams.values():
            stream.finish(error)

    # -- the hooks ----------------------------------------------------------------------------

    async def _call(self, hook: str, *args: Any) -> Any:
        return await self.watchdog.call(getattr(self._instance(), hook), *args)

    async def _leave(self) -> None:
        ended = [key for key, stream in self._streams.items() if not _live(stream)]
        for key in ended:
            del self._streams[key]
        keys, self._leaving = self._leaving + ended, []
        if not keys:
            return
        try:
            await self._call("leave", keys)
        except ModelStalled:
            self._leaving = keys + self._leaving  # left once the model answers again
        except Exception:
            logger.exception("%s: leave(%d keys) raised", self._label("leave"), len(keys))

    def _deliver(self, answer: Any, keys: list[int], hook: str) -> None:
        if answer is None:
            return
        if not isinstance(answer, Mapping):
            self._fail(
                keys,
                PredictError(
                    f"{self._label(hook)} returned {type(answer).__name__}; return a dict from "
                    "each item's key to its outcome (a chunk, None, END or an exception), or None"
                ),
            )
            return
        for key, outcome in answer.items():
            stream = self._streams.get(key)
            if stream is None or outcome is None or not _live(stream):
                continue  # not an item of this batch (any more), or nothing this step
            if outcome is END:
                stream.finish()
                continue
            chunk = self.outcomes.coerce(outcome)
            if isinstance(chunk, ServingError):
                self.recorder.failed(type(chunk).__name__, 1)
                stream.finish(chunk)
            else:
                self.recorder.chunk()
                stream.put(chunk)

    def _fail(self, keys: list[int], exc: Exception) -> None:
        error = self.outcomes.error(exc, len(keys))
        self.recorder.failed(type(error).__name__, len(keys))
        for key in keys:
            if (stream := self._streams.get(key)) is not None:
                stream.finish(error)
        if out_of_memory(exc):
            free_cache()
            if self._on_out_of_memory is not None:
                self._on_out_of_memory(len(keys))

    def _label(self, hook: str) -> str:
        return self.outcomes.label.rsplit(".", 1)[0] + "." + hook


def _live(stream: ItemStream) -> bool:
    return not (stream.finished or stream.closed)
