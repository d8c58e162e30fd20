"""GPU memory: recognising an out-of-memory error, freeing the cache, and the batch cap.

A batch that runs out of GPU memory is no item's fault: the runtime frees PyTorch's cache,
runs the batch in halves until the pieces fit (see ``isolation``) and lowers the service's
``BatchCap``, which the batcher keeps to from then on. The cap is only ever lowered; a
restart sets it back to ``max_batch_size``.

PyTorch is never imported here: an error is out of memory only if ``torch`` is already
imported (the model raised it) and the error is one of its ``OutOfMemoryError`` classes.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

__all__ = ["BatchCap", "free_cache", "out_of_memory"]

logger = logging.getLogger("modal_fastapi_kit")


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is PyTorch's (CUDA) out-of-memory error."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    kinds = (
        getattr(torch, "OutOfMemoryError", None),
        getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None),
    )
    return any(isinstance(kind, type) and isinstance(exc, kind) for kind in kinds)


def free_cache() -> None:
    """Hand PyTorch's cached, unused GPU memory back (nothing without CUDA)."""
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        logger.exception("freeing the CUDA cache failed")


class BatchCap:
    """The most items one batch of the service named ``label`` may hold."""

    def __init__(self, label: str, size: int) -> None:
        self.label = label
        self.size = self.initial = size
        self._listeners: list[Callable[[int], None]] = []

    @property
    def lowered(self) -> int | None:
        """The cap, once it is below the configured ``max_batch_size``; else ``None``."""
        return self.size if self.size < self.initial else None

    def add_listener(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(size)`` each time the cap is lowered (and now, if it was)."""
        self._listeners.append(listener)
        if self.lowered is not None:
            listener(self.lowered)

    def ran_out(self, size: int) -> None:
        """A batch of ``size`` items ran out of memory: keep to half of it from now on."""
        lower = max(1, (size + 1) // 2)
        if lower >= self.size:
            return
        self.size = lower
        logger.warning(
            "%s ran out of GPU memory on a batch of %d; batches hold at most %d items from now on",
            self.label,
            size,
            lower,
        )
        for listener in self._listeners:
            listener(lower)
