"""``ItemStream``: the chunks of one streaming request, from the model to whoever sends them.

The producer (the runtime stepping a generator, or the Modal backend reading a remote
generator) calls ``put`` for each chunk and ``finish`` once, with an error if the stream
failed. The consumer (the router) awaits ``next`` with a timeout and calls ``close`` when it
stops reading, for example because the client left; the producer sees ``closed`` and stops
the generator. ``StreamBatch`` is what a streaming batch hands the batcher: one stream per
item and the moment the batch's generator is done with the model.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..exceptions import DeadlineExceeded

__all__ = ["END", "ItemStream", "StreamBatch"]


class _End:
    """The marker a batched generator puts in an item's slot when that item's stream is done."""

    _instance: _End | None = None

    def __new__(cls) -> _End:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "END"


END = _End()


class ItemStream:
    """An async queue of chunks with one terminal state: finished, failed or closed."""

    __slots__ = ("_chunks", "_done", "_error", "_on_close", "_waiter", "closed", "sent")

    def __init__(self) -> None:
        self._chunks: collections.deque[Any] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self._error: BaseException | None = None
        self._on_close: Callable[[], object] | None = None
        self.closed = False  # the consumer has stopped reading
        self.sent = 0  # chunks handed to the consumer so far

    # -- producer ------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self._done

    def put(self, chunk: Any) -> None:
        if self._done or self.closed:
            return
        self._chunks.append(chunk)
        self._wake()

    def finish(self, error: BaseException | None = None) -> None:
        """End the stream; with ``error`` the consumer gets it after the chunks already put."""
        if self._done:
            return
        self._done = True
        self._error = error
        self._wake()

    def on_close(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` (once) when the consumer closes the stream."""
        self._on_close = callback

    # -- consumer ------------------------------------------------------------------------------

    async def next(self, timeout: float) -> Any:
        """The next chunk; ``StopAsyncIteration`` at the end or once closed; the stream's
        error if it failed; ``DeadlineExceeded`` if nothing came within ``timeout`` seconds."""
        while not self._chunks:
            if self.closed:
                raise StopAsyncIteration
            if self._done:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(timeout, _settle, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if not self._chunks and not self._done and not self.closed:
                raise DeadlineExceeded(f"no chunk came within {timeout:g}s")
        self.sent += 1
        return self._chunks.popleft()

    def close(self) -> None:
        """Stop reading: chunks put from now on are dropped and the producer is told."""
        if self.closed:
            return
        self.closed = True
        self._chunks.clear()
        self._wake()
        callback, self._on_close = self._on_close, None
        if callback is not None:
            callback()

    def _wake(self) -> None:
        if self._waiter is not None:
            _settle(self._waiter)


def _settle(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


@dataclass(frozen=True, slots=True)
class StreamBatch:
    """A streaming batch: each item's stream, and when the model is free of the batch."""

    streams: list[ItemStream | BaseException]
    done: Awaitable[object]
