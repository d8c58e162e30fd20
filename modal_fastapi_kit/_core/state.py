"""``LoadState``: where a runtime (or a backend) is in its life."""

from __future__ import annotations

import enum

__all__ = ["LoadState"]


class LoadState(str, enum.Enum):
    """Where a runtime (or a backend) is in its life; ``/readyz`` is 200 only in ``READY``."""

    CREATED = "created"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"
