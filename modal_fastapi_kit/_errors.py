"""Exceptions raised by modal_fastapi_kit.

KitError
├── ConfigError            a @gpu_service option or a ModelServer subclass is wrong
├── MissingExtraError      an optional dependency is not installed
└── ServingError           a request could not be answered; carries an HTTP status
    ├── NotReadyError      the model has not finished loading (503)
    ├── QueueFullError     the batch queue is at its bound (503)
    ├── DeadlineExceeded   the request's deadline passed (504)
    ├── PredictError       predict / predict_batch raised (500)
    └── BackendUnavailable the backend cannot be reached (502 / 503)
"""

from __future__ import annotations


class KitError(Exception):
    """Root of every exception this package raises on purpose."""


class ConfigError(KitError, ValueError):
    """A service option or a ModelServer subclass is invalid; raised at decoration time."""


class MissingExtraError(KitError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


class ServingError(KitError):
    """A request could not be answered. ``status_code`` is what the router sends."""

    status_code: int = 500
    retry_after: int | None = None

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        if retry_after is not None:
            self.retry_after = retry_after

    @property
    def detail(self) -> str:
        return str(self)


class NotReadyError(ServingError):
    status_code = 503
    retry_after = 5


class QueueFullError(ServingError):
    status_code = 503
    retry_after = 1


class DeadlineExceeded(ServingError):
    status_code = 504


class PredictError(ServingError):
    """The user's predict code raised; the original exception is the ``__cause__``."""

    status_code = 500


class BackendUnavailable(ServingError):
    status_code = 503
    retry_after = 5


class UpstreamError(BackendUnavailable):
    """The backend (Modal) took the request but failed to run it."""

    status_code = 502


def missing_extra(package: str, extra: str) -> MissingExtraError:
    """Build the error for an optional import that failed."""
    return MissingExtraError(
        f"{package!r} is not installed. Install it with: pip install 'modal-fastapi-kit[{extra}]'"
    )
