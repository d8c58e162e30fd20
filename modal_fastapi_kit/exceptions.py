"""The exceptions modal_fastapi_kit raises; a client of a service raises the same ones.

KitError
├── ConfigError            a @gpu_service option or a ModelServer subclass is wrong
├── JobCanceled            raised by ModelServer.progress() once its job was canceled
└── ServingError           a request could not be answered; carries a status and a code
    ├── InputError         the request or the input is refused (4xx, its message is shown)
    ├── Unauthorized       no valid API key (401)
    ├── NotReadyError      the model has not finished loading, or is shutting down (503)
    │   ├── LoadFailed     the model failed to load and will not be loaded again (503)
    │   └── ModelStalled   a model call ran past stall_timeout; the model is stuck (503)
    ├── QueueFullError     the batch queue (or the connection limit) is at its bound (503)
    ├── DeadlineExceeded   the request's deadline passed (504)
    ├── PredictError       predict / predict_batch raised (500)
    └── BackendUnavailable the backend cannot be reached (502 / 503)
        └── UpstreamError  the backend took the request but failed to run it (502)

Every error a service answers carries one of the ``ErrorCode`` s; ``ERROR_CODES`` says, for
each, its status, the exception a client raises for it and whether a client may retry. A
client decides on the code alone, never on the words of the message.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "ERROR_CODES",
    "BackendUnavailable",
    "CodeInfo",
    "ConfigError",
    "DeadlineExceeded",
    "ErrorCode",
    "InputError",
    "JobCanceled",
    "KitError",
    "LoadFailed",
    "ModelStalled",
    "NotReadyError",
    "PredictError",
    "QueueFullError",
    "Retry",
    "ServingError",
    "Unauthorized",
    "UpstreamError",
    "error_for",
]


class ErrorCode(str, enum.Enum):
    """The ``code`` of an error body: stable, and what a client branches on."""

    INVALID_INPUT = "invalid_input"
    VALIDATION_FAILED = "validation_failed"
    UNREADABLE_BODY = "unreadable_body"
    BODY_TOO_LARGE = "body_too_large"
    FILE_TOO_LARGE = "file_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    MALFORMED_UPLOAD = "malformed_upload"
    UPLOAD_TIMEOUT = "upload_timeout"
    FETCH_FAILED = "fetch_failed"
    REFUSED = "refused"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_READY = "not_ready"
    SHUTTING_DOWN = "shutting_down"
    LOAD_FAILED = "load_failed"
    STALLED = "stalled"
    QUEUE_FULL = "queue_full"
    OVERLOADED = "overloaded"
    DEADLINE = "deadline"
    PREDICT_FAILED = "predict_failed"
    BACKEND_UNAVAILABLE = "backend_unavailable"
    UPSTREAM_FAILED = "upstream_failed"
    JOB_NOT_FOUND = "job_not_found"
    JOB_EXPIRED = "job_expired"
    JOB_CANCELED = "job_canceled"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    TOO_MANY_JOBS = "too_many_jobs"
    WEBHOOK_REFUSED = "webhook_refused"

    def __str__(self) -> str:
        return self.value


class Retry(str, enum.Enum):
    """Whether a client may send the same request again after this error."""

    SAFE = "safe"  # the input was not run: retry after Retry-After
    UNSAFE = "unsafe"  # it may have run: retry only if running it twice is harmless
    NEVER = "never"  # the same request gets the same answer

    def __str__(self) -> str:
        return self.value


class _Default(enum.Enum):
    CLASS = 0  # "the exception class's own value", where None means "none"


_CLASS_DEFAULT = _Default.CLASS


class KitError(Exception):
    """Root of every exception this package raises on purpose."""


class ConfigError(KitError, ValueError):
    """A service option or a ModelServer subclass is invalid; raised at decoration time."""


class JobCanceled(KitError):
    """Raised by ``ModelServer.progress()`` when every job the call runs for was canceled:
    let it propagate, and the model is free at once (the job already reads ``canceled``)."""


class ServingError(KitError):
    """A request could not be answered, with the ``status_code`` and ``code`` it is answered
    with; ``retry_after`` is the ``Retry-After`` seconds, if any.

    The message is what the client reads; ``internal`` (paths, credentials advice, the names
    of the app and class behind the service) goes only to the server's log, with the request
    id. A client sets ``request_id`` to the id the server answered under.
    """

    status_code: int = 500
    code: ErrorCode = ErrorCode.PREDICT_FAILED
    retry_after: int | None = None

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | None = None,
        status_code: int | None = None,
        retry_after: int | _Default | None = _CLASS_DEFAULT,
        internal: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        if retry_after is not _CLASS_DEFAULT:
            self.retry_after = retry_after
        self.internal = internal
        self.request_id = request_id

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
    code = ErrorCode.INVALID_INPUT

    def __init__(
        self,
        message: str,
        *,
        status_code: int = 422,
        code: ErrorCode | None = None,
        request_id: str | None = None,
    ) -> None:
        if not (isinstance(status_code, int) and 400 <= status_code <= 499):
            raise ConfigError(
                f"InputError(status_code={status_code!r}) is invalid: a client error is a 4xx "
                "status such as 400, 413 or 422"
            )
        super().__init__(
            message, code=code, status_code=status_code, retry_after=None, request_id=request_id
        )


class Unauthorized(ServingError):
    """The request carries no valid API key; answered with ``WWW-Authenticate: Bearer``."""

    status_code = 401
    code = ErrorCode.UNAUTHORIZED


class NotReadyError(ServingError):
    """The model is not loaded yet, or the server is shutting down: retry later."""

    status_code = 503
    code = ErrorCode.NOT_READY
    retry_after: int | None = 5


class LoadFailed(NotReadyError):
    """The model failed to load (after its retries): nothing changes by waiting, so no
    ``Retry-After``; ``/healthz`` answers 503 so that the process is restarted."""

    code = ErrorCode.LOAD_FAILED
    retry_after = None


class ModelStalled(NotReadyError):
    """A model call ran past ``stall_timeout``: queued and new requests are refused until it
    returns, ``/healthz`` and ``/readyz`` answer 503."""

    code = ErrorCode.STALLED


class QueueFullError(ServingError):
    """The queue (or the server's connection limit) is full: retry after ``Retry-After``."""

    status_code = 503
    code = ErrorCode.QUEUE_FULL
    retry_after: int | None = 1


class DeadlineExceeded(ServingError):
    """No answer within the request's deadline; the input may have run."""

    status_code = 504
    code = ErrorCode.DEADLINE


class PredictError(ServingError):
    """The user's predict code raised; the original exception is the ``__cause__``."""

    status_code = 500
    code = ErrorCode.PREDICT_FAILED


class BackendUnavailable(ServingError):
    """The backend (the deployed Modal class) cannot be reached; nothing was run."""

    status_code = 503
    code = ErrorCode.BACKEND_UNAVAILABLE
    retry_after: int | None = 5


class UpstreamError(BackendUnavailable):
    """The backend (Modal) took the request but failed to run it."""

    status_code = 502
    code = ErrorCode.UPSTREAM_FAILED


@dataclass(frozen=True)
class CodeInfo:
    """What an ``ErrorCode`` means: the status it is answered with (``None``: any 4xx the
    model chose), the exception a client raises for it, and whether a retry may help."""

    status: int | None
    error: type[ServingError]
    retry: Retry
    meaning: str


ERROR_CODES: Mapping[ErrorCode, CodeInfo] = MappingProxyType(
    {
        ErrorCode.INVALID_INPUT: CodeInfo(
            None,
            InputError,
            Retry.NEVER,
            "the model refused the input (422 unless it said)",
        ),
        ErrorCode.VALIDATION_FAILED: CodeInfo(
            422, InputError, Retry.NEVER, "the body does not match the request model"
        ),
        ErrorCode.UNREADABLE_BODY: CodeInfo(
            400, InputError, Retry.NEVER, "the body is not UTF-8 JSON, or is nested too deep"
        ),
        ErrorCode.BODY_TOO_LARGE: CodeInfo(
            413, InputError, Retry.NEVER, "the body is over max_body_bytes"
        ),
        ErrorCode.FILE_TOO_LARGE: CodeInfo(
            413, InputError, Retry.NEVER, "a file is over its field's max_bytes"
        ),
        ErrorCode.UNSUPPORTED_MEDIA_TYPE: CodeInfo(
            415,
            InputError,
            Retry.NEVER,
            "the body's (or a file's) content type is not one the route accepts",
        ),
        ErrorCode.MALFORMED_UPLOAD: CodeInfo(
            400,
            InputError,
            Retry.NEVER,
            "a multipart body is broken, has no boundary, or too many parts or fields",
        ),
        ErrorCode.UPLOAD_TIMEOUT: CodeInfo(
            408, InputError, Retry.NEVER, "the body did not arrive within upload_timeout"
        ),
        ErrorCode.FETCH_FAILED: CodeInfo(
            422,
            InputError,
            Retry.NEVER,
            "a file URL was refused (scheme, private address) or could not be downloaded",
        ),
        ErrorCode.REFUSED: CodeInfo(
            None, InputError, Retry.NEVER, "a dependency of the route refused the request (its 4xx)"
        ),
        ErrorCode.NOT_FOUND: CodeInfo(
            404, InputError, Retry.NEVER, "no route at this path (in the apps the kit builds)"
        ),
        ErrorCode.METHOD_NOT_ALLOWED: CodeInfo(
            405, InputError, Retry.NEVER, "the route does not take this method"
        ),
        ErrorCode.UNAUTHORIZED: CodeInfo(401, Unauthorized, Retry.NEVER, "no valid API key"),
        ErrorCode.FORBIDDEN: CodeInfo(
            403, InputError, Retry.NEVER, "the request skipped the edge the service is locked to"
        ),
        ErrorCode.NOT_READY: CodeInfo(503, NotReadyError, Retry.SAFE, "the model is still loading"),
        ErrorCode.SHUTTING_DOWN: CodeInfo(
            503, NotReadyError, Retry.SAFE, "the server is shutting down; another may answer"
        ),
        ErrorCode.LOAD_FAILED: CodeInfo(
            503, LoadFailed, Retry.NEVER, "load() failed and will not be run again here"
        ),
        ErrorCode.STALLED: CodeInfo(
            503, ModelStalled, Retry.SAFE, "a model call ran past stall_timeout"
        ),
        ErrorCode.QUEUE_FULL: CodeInfo(503, QueueFullError, Retry.SAFE, "max_queue_size reached"),
        ErrorCode.OVERLOADED: CodeInfo(
            503, QueueFullError, Retry.SAFE, "the limit on requests at once is reached (a 429 too)"
        ),
        ErrorCode.DEADLINE: CodeInfo(
            504, DeadlineExceeded, Retry.UNSAFE, "no answer (or chunk) within its deadline"
        ),
        ErrorCode.PREDICT_FAILED: CodeInfo(
            500, PredictError, Retry.UNSAFE, "predict raised, or answered something unusable"
        ),
        ErrorCode.BACKEND_UNAVAILABLE: CodeInfo(
            503, BackendUnavailable, Retry.SAFE, "the backend cannot be reached; nothing ran"
        ),
        ErrorCode.UPSTREAM_FAILED: CodeInfo(
            502, UpstreamError, Retry.UNSAFE, "the backend took the request and failed to run it"
        ),
        ErrorCode.JOB_NOT_FOUND: CodeInfo(
            404, InputError, Retry.NEVER, "no job with this id for this API key"
        ),
        ErrorCode.JOB_EXPIRED: CodeInfo(
            410, InputError, Retry.NEVER, "the job's result was kept for its retention and is gone"
        ),
        ErrorCode.JOB_CANCELED: CodeInfo(
            409, InputError, Retry.NEVER, "the job was canceled; it has no result"
        ),
        ErrorCode.IDEMPOTENCY_KEY_REUSED: CodeInfo(
            422,
            InputError,
            Retry.NEVER,
            "the Idempotency-Key was used before with a different body",
        ),
        ErrorCode.TOO_MANY_JOBS: CodeInfo(
            503, QueueFullError, Retry.SAFE, "max_pending jobs are queued or running"
        ),
        ErrorCode.WEBHOOK_REFUSED: CodeInfo(
            422,
            InputError,
            Retry.NEVER,
            "the webhook URL is refused (scheme, private address), or no secret signs webhooks",
        ),
    }
)


def error_for(
    code: ErrorCode,
    message: str,
    *,
    status_code: int | None = None,
    retry_after: int | None = None,
    request_id: str | None = None,
) -> ServingError:
    """The exception ``code`` stands for, as a client raises it for an answer."""
    info = ERROR_CODES[code]
    status = status_code if status_code is not None else info.status
    if issubclass(info.error, InputError):
        return info.error(message, status_code=status or 422, code=code, request_id=request_id)
    return info.error(
        message, code=code, status_code=status, retry_after=retry_after, request_id=request_id
    )


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
