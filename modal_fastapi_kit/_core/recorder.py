"""What the core reports as it works, without knowing who listens:

- ``Recorder``: batch sizes, queue waits, failures, the batch cap and the seconds each load
  hook took, for a metrics backend (``NO_RECORDER`` counts nothing);
- ``Trace``: one request's path through the core (time in queue, its batch's size and run
  time), for its access-log line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["NO_RECORDER", "Recorder", "Trace"]


@dataclass(slots=True)
class Trace:
    """Where one request's time went (for a request of several items: its slowest item)."""

    queue_seconds: float | None = None
    batch_size: int | None = None
    model_seconds: float | None = None

    def queued(self, seconds: float) -> None:
        self.queue_seconds = max(seconds, self.queue_seconds or 0.0)

    def ran(self, size: int, seconds: float) -> None:
        self.batch_size = max(size, self.batch_size or 0)
        self.model_seconds = max(seconds, self.model_seconds or 0.0)


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

    def batch_cap(self, size: int) -> None:
        """Batches hold at most ``size`` items from now on (lowered after running out of
        GPU memory)."""

    def loaded(self, phase: str, seconds: float) -> None:
        """The load hook ``phase`` (``load``, ``to_device``, ``warmup``) took ``seconds``."""


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

    def batch_cap(self, size: int) -> None:
        pass

    def loaded(self, phase: str, seconds: float) -> None:
        pass


NO_RECORDER: Recorder = _Nothing()
