"""What a deployment holds in GPU-hours from its autoscaling settings alone: idle, while serving,
and after a burst. No prices: multiply by the GPU's hourly rate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._config import ServiceConfig

__all__ = ["DAYS_PER_MONTH", "HOURS_PER_DAY", "IdleCost", "gpu_count", "hours", "idle_cost"]

HOURS_PER_DAY = 24
DAYS_PER_MONTH = 30


@dataclass(frozen=True)
class IdleCost:
    """GPU-hours the GPU class holds with no traffic, and after a burst. No prices."""

    gpus: tuple[str, ...]
    gpus_per_container: int  # the largest count among the gpu choices
    min_containers: int
    buffer_containers: int
    max_containers: int | None
    scaledown_window: int

    @property
    def idle_gpus(self) -> int:
        """GPUs held with no traffic at all: ``min_containers`` x GPUs per container."""
        return self.min_containers * self.gpus_per_container

    @property
    def idle_gpu_hours_per_day(self) -> float:
        return float(self.idle_gpus * HOURS_PER_DAY)

    @property
    def idle_gpu_hours_per_month(self) -> float:
        return float(self.idle_gpus * HOURS_PER_DAY * DAYS_PER_MONTH)

    @property
    def buffer_gpus_while_active(self) -> int:
        """Idle GPUs Modal keeps above demand while inputs arrive (``buffer_containers``)."""
        return self.buffer_containers * self.gpus_per_container

    @property
    def burst_tail_gpu_hours_per_container(self) -> float:
        """What each container above ``min_containers`` holds after its last input."""
        return self.scaledown_window / 3600 * self.gpus_per_container

    @property
    def burst_tail_gpu_hours_at_max(self) -> float | None:
        """The tail of a burst that scaled to ``max_containers``; None when unbounded."""
        if self.max_containers is None:
            return None
        above = self.max_containers - self.min_containers
        return above * self.burst_tail_gpu_hours_per_container

    def as_dict(self) -> dict[str, Any]:
        """The figures as ``mfk check --json`` prints them, rounded to 4 places."""
        return {
            "gpu": list(self.gpus),
            "gpus_per_container": self.gpus_per_container,
            "min_containers": self.min_containers,
            "buffer_containers": self.buffer_containers,
            "max_containers": self.max_containers,
            "scaledown_window_s": self.scaledown_window,
            "idle_gpus": self.idle_gpus,
            "idle_gpu_hours_per_day": _round(self.idle_gpu_hours_per_day),
            "idle_gpu_hours_per_month": _round(self.idle_gpu_hours_per_month),
            "days_per_month": DAYS_PER_MONTH,
            "buffer_gpus_while_active": self.buffer_gpus_while_active,
            "burst_tail_gpu_hours_per_container": _round(self.burst_tail_gpu_hours_per_container),
            "burst_tail_gpu_hours_at_max": None
            if self.burst_tail_gpu_hours_at_max is None
            else _round(self.burst_tail_gpu_hours_at_max),
        }


def idle_cost(config: ServiceConfig) -> IdleCost:
    """The GPU-hours the config's autoscaling holds; zero GPUs for a CPU-only service."""
    return IdleCost(
        gpus=config.gpus,
        gpus_per_container=max((gpu_count(g) for g in config.gpus), default=0),
        min_containers=config.min_containers,
        buffer_containers=config.buffer_containers or 0,
        max_containers=config.max_containers,
        scaledown_window=config.scaledown_window,
    )


def gpu_count(gpu: str) -> int:
    """GPUs per container in a Modal gpu string: ``"A10"`` -> 1, ``"H100:2"`` -> 2."""
    _, sep, count = gpu.partition(":")
    return int(count) if sep and count.isdigit() else 1


def hours(value: float) -> str:
    """GPU-hours as printed: whole hours from 100 up, else three significant digits."""
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def _round(value: float) -> float:
    return round(value, 4)
