"""The options' named defaults and bounds, the GPU types Modal knows, and ``RetryPolicy``.

The bottom of the configuration: ``_config`` (``ServiceConfig``) names them as its defaults
and checks values against them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .exceptions import ConfigError

__all__ = [
    "DEFAULT_API_KEYS_ENV",
    "DEFAULT_CHUNK_TIMEOUT",
    "DEFAULT_FILE_MAX_BODY_BYTES",
    "DEFAULT_MAX_BATCH_SIZE",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_CONCURRENT_INPUTS",
    "DEFAULT_MAX_QUEUE_SIZE",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_RETRY_POLICY",
    "DEFAULT_ROUTE",
    "DEFAULT_SCALEDOWN_WINDOW",
    "DEFAULT_SERVER_PORT",
    "DEFAULT_TIMEOUT",
    "DEFAULT_UPLOAD_TIMEOUT",
    "DEFAULT_WAIT_MS",
    "DEFAULT_WEB_MAX_INPUTS",
    "KNOWN_GPUS",
    "MAX_EXIT_GRACE_PERIOD",
    "MAX_GPU_COUNT",
    "MAX_MODAL_BATCH_SIZE",
    "MAX_MODAL_WAIT_MS",
    "MODAL_WEB_TIMEOUT",
    "RENAMED_OPTIONS",
    "SERVER_DRAIN_MARGIN",
    "STALL_FACTOR",
    "TOPOLOGIES",
    "RetryPolicy",
    "Topology",
    "check",
    "is_int",
    "is_number",
]

DEFAULT_ROUTE = "/predict"
DEFAULT_MAX_BATCH_SIZE = 1
DEFAULT_WAIT_MS = 5.0
DEFAULT_MAX_CONCURRENT_INPUTS = 64
DEFAULT_MAX_QUEUE_SIZE = 1024
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
# A service whose request model has a File field takes bodies up to this by default: a photo,
# a few minutes of audio, a document. Larger inputs belong on a Volume or in a bucket.
DEFAULT_FILE_MAX_BODY_BYTES = 64 * 1024 * 1024
# How long a request's body may take to arrive (a slow upload is cut with a 408).
DEFAULT_UPLOAD_TIMEOUT = 60.0
# Modal cuts web requests at 150 s; a deadline below that answers 504 before the client
# gets Modal's 303 redirect.
DEFAULT_REQUEST_TIMEOUT = 60.0
DEFAULT_TIMEOUT = 300
DEFAULT_SCALEDOWN_WINDOW = 120
DEFAULT_WEB_MAX_INPUTS = 256
# topology="server": the port the container's HTTP server listens on, the seconds past
# request_timeout that draining may take on shutdown, and Modal's cap on that grace period.
DEFAULT_SERVER_PORT = 8000
SERVER_DRAIN_MARGIN = 5
MAX_EXIT_GRACE_PERIOD = 3600
# A stream's chunks: the first within request_timeout unless set, then at most this far apart.
DEFAULT_CHUNK_TIMEOUT = 30.0
DEFAULT_API_KEYS_ENV = "MFK_API_KEYS"
# stall_timeout="auto": a model call this many times request_timeout long is stuck, since
# every request waiting on it has already been answered 504.
STALL_FACTOR = 2.0

MODAL_WEB_TIMEOUT = 150.0
MAX_MODAL_BATCH_SIZE = 1000
MAX_MODAL_WAIT_MS = 600_000
MAX_GPU_COUNT = 8

# GPU type names Modal accepts (case-insensitive), as in `gpu="A10"` or `gpu="H100:2"`.
KNOWN_GPUS = (
    "T4",
    "L4",
    "A10",
    "A10G",
    "A100",
    "A100-40GB",
    "A100-80GB",
    "L40S",
    "H100",
    "H100!",
    "H200",
    "B200",
    "B200+",
    "RTX-PRO-6000",
    "ANY",
)

Topology = Literal["split", "colocated", "server"]
TOPOLOGIES: tuple[Topology, ...] = ("split", "colocated", "server")

# Names a user may reach for, from Modal's retired options (keep_warm, ...) and from other
# serving libraries (batch_size, pip, ...): each gets the kit's own spelling in the error.
RENAMED_OPTIONS = {
    "keep_warm": "min_containers",
    "concurrency_limit": "max_containers",
    "container_idle_timeout": "scaledown_window",
    "allow_concurrent_inputs": "max_concurrent_inputs",
    "path": "route",
    "batch_size": "max_batch_size",
    "max_wait_ms": "wait_ms",
    "batch_wait_ms": "wait_ms",
    "pip": "packages",
    "pip_packages": "packages",
    "image_packages": "packages",
}

# An app name and a web label: what Modal accepts in a modal.run host name.


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Retries for the GPU class on Modal; maps to ``modal.Retries``.

    Only failed *inputs* are retried by Modal (a crash or an exception in ``predict``), never
    a web request: Modal rejects retries on web functions.
    """

    max_retries: int
    backoff_coefficient: float = 2.0
    initial_delay: float = 1.0
    max_delay: float = 60.0

    def __post_init__(self) -> None:
        check(
            isinstance(self.max_retries, int) and 0 <= self.max_retries <= 10,
            "RetryPolicy.max_retries",
            self.max_retries,
            "an int from 0 to 10 (Modal's bounds)",
        )
        check(
            1.0 <= self.backoff_coefficient <= 10.0,
            "RetryPolicy.backoff_coefficient",
            self.backoff_coefficient,
            "a number from 1.0 to 10.0",
        )
        check(
            0.0 <= self.initial_delay <= 60.0,
            "RetryPolicy.initial_delay",
            self.initial_delay,
            "seconds from 0 to 60",
        )
        check(
            1.0 <= self.max_delay <= 60.0,
            "RetryPolicy.max_delay",
            self.max_delay,
            "seconds from 1 to 60",
        )


def check(ok: bool, name: str, value: object, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r} is invalid: expected {expected}")


# Inference is recomputable: an input whose container crashed (out of memory, a lost GPU) is
# run again, twice at most, after 1 s then 2 s. A predict that raises is not retried: its
# error is the item's answer (see _core/wire.py), and the same input would fail again.
DEFAULT_RETRY_POLICY = RetryPolicy(
    max_retries=2, backoff_coefficient=2.0, initial_delay=1.0, max_delay=10.0
)


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
