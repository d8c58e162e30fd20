"""The exceptions modal_fastapi_kit raises; a client of a service raises the same ones.

KitError
├── ConfigError            a @gpu_service option or a ModelServer subclass is wrong
└── ServingError           a request could not be answered; carries an HTTP status
    ├── InputError         the model cannot handle this input (4xx, its message is shown)
    ├── Unauthorized       no valid API key (401)
    ├── NotReadyError      the model has not finished loading (503)
    │   ├── LoadFailed     the model failed to load and will not be loaded again (503)
    │   └── ModelStalled   a model call ran past stall_timeout; the model is stuck (503)
    ├── QueueFullError     the batch queue is at its bound (503)
    ├── DeadlineExceeded   the request's deadline passed (504)
    ├── PredictError       predict / predict_batch raised (500)
    └── BackendUnavailable the backend cannot be reached (502 / 503)
        └── UpstreamError  the backend took the request but failed to run it (502)
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailable",
    "ConfigError",
    "DeadlineExceeded",
    "InputError",
    "KitError",
    "LoadFailed",
    "ModelStalled",
    "NotReadyError",
    "PredictError",
    "QueueFullError",
    "ServingError",
    "Unauthorized",
    "UpstreamError",
]


class KitError(Exception):
    """Root of every exception this package raises on purpose."""


class ConfigError(KitError, ValueError):
    """A service option or a ModelServer subclass is invalid; raised at decoration time."""


class ServingError(KitError):
    """A request could not be answered. ``status_code`` is what the router sends.

    The message is what the client reads; ``internal`` (paths, credentials advice, the names
    of the app and class behind the service) goes only to the server's log, with the request
    id.
    """

    status_code: int = 500
    retry_after: int | None = None

    def __init__(
        self, message: str, *, retry_after: int | None = None, internal: str | None = None
    ) -> None:
        super().__init__(message)
        if retry_after is not None:
            self.retry_after = retry_after
        self.internal = internal
        self.request_id: str | None = None  # set where a request's answer is read back

    @property
    def detail(self) -> str:
        return str(self)


class InputError(ServingError):
    """Raise it from ``predict`` (or put it in an item's slot) for input the model cannot handle.

    The client gets ``status_code`` (422 unless given, any 4xx) and the message, word for
    word, so say what was wrong and how to fix it::

        raise InputError(f"the text is {n} tokens long; the model takes at most 512")
    """

    status_code = 422

    def __init__(self, message: str, *, status_code: int = 422) -> None:
        if not (isinstance(status_code, int) and 400 <= status_code <= 499):
            raise ConfigError(
                f"InputError(status_code={status_code!r}) is invalid: a client error is a 4xx "
                "status such as 400, 413 or 422"
            )
        super().__init__(message)
        self.status_code = status_code


class Unauthorized(ServingError):
    """The request carries no valid API key; answered with ``WWW-Authenticate: Bearer``."""

    status_code = 401


class NotReadyError(ServingError):
    status_code = 503
    retry_after: int | None = 5


class LoadFailed(NotReadyError):
    """The model failed to load (after its retries): nothing changes by waiting, so no
    ``Retry-After``; ``/healthz`` answers 503 so that the process is restarted."""

    retry_after = None


class ModelStalled(NotReadyError):
    """A model call ran past ``stall_timeout``: queued and new requests are refused until it
    returns, ``/healthz`` and ``/readyz`` answer 503."""


class QueueFullError(ServingError):
    status_code = 503
    retry_after: int | None = 1


class DeadlineExceeded(ServingError):
    status_code = 504


class PredictError(ServingError):
    """The user's predict code raised; the original exception is the ``__cause__``."""

    status_code = 500


class BackendUnavailable(ServingError):
    status_code = 503
    retry_after: int | None = 5


class UpstreamError(BackendUnavailable):
    """The backend (Modal) took the request but failed to run it."""

    status_code = 502


def as_predict_error(exc: BaseException, where: str) -> ServingError:
    """What a client is answered for ``exc`` raised by the user's ``where`` hook.

    An ``InputError`` (the model refused the input) and the kit's own ``ServingError`` s keep
    their status; anything else becomes a ``PredictError`` (500) with ``exc`` as its cause.
    """
    if isinstance(exc, ServingError):
        return exc
    error = PredictError(f"{where} raised {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error
