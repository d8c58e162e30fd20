"""``Recorder``: what the core reports as it works (batch sizes, queue waits, failures), so a
metrics backend can count it without the core knowing which. ``NO_RECORDER`` counts nothing.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["NO_RECORDER", "Recorder"]


class Recorder(Protocol):
    def batch(self, size: int, seconds: float) -> None:
        """A batch of ``size`` items ran for ``seconds``."""

    def waited(self, seconds: float) -> None:
        """An item waited ``seconds`` in the queue before its batch formed."""

    def withdrawn(self) -> None:
        """An item left the queue before it was computed (its client left or gave up)."""

    def failed(self, error: str, count: int) -> None:
        """``count`` items failed with the error class named ``error``."""

    def chunk(self) -> None:
        """A stream got a chunk."""


class _Nothing:
    def batch(self, size: int, seconds: float) -> None:
        pass

    def waited(self, seconds: float) -> None:
        pass

    def withdrawn(self) -> None:
        pass

    def failed(self, error: str, count: int) -> None:
        pass

    def chunk(self) -> None:
        pass


NO_RECORDER: Recorder = _Nothing()
