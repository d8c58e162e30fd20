"""The error contract: every error the routes answer is ``ErrorBody`` JSON, with its ``code``
and the request id.

A ``ServingError`` keeps its status and, for an ``InputError``, its message; a failure inside
the model (``PredictError``, or anything unexpected) is logged with the request id and the
client learns only that it failed and which id to quote.
"""

from __future__ import annotations

import logging
import os
import re

from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection

from .._protocol import REQUEST_ID_HEADER, ErrorBody
from ..exceptions import PredictError, ServingError

__all__ = [
    "REQUEST_ID_HEADER",
    "ErrorBody",
    "error_response",
    "failure_response",
    "public_error",
    "request_id",
]

logger = logging.getLogger("modal_fastapi_kit")

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id(request: HTTPConnection) -> str:
    """The client's ``X-Request-ID`` when it is safe to echo, else a new random one."""
    given = request.headers.get(REQUEST_ID_HEADER)
    if given is not None and _REQUEST_ID_RE.match(given):
        return given
    return os.urandom(16).hex()  # 32 random hex digits like uuid4().hex, for a fraction of its cost


def public_error(error: BaseException, request_id: str) -> ServingError:
    """The error a client may see for ``error``: a model failure and any ``internal`` detail
    are logged with the request id, never shown."""
    if not isinstance(error, ServingError):
        wrapped = PredictError(f"{type(error).__name__}: {error}")
        wrapped.__cause__ = error
        error = wrapped
    if isinstance(error, PredictError):
        logger.error("request %s failed: %s", request_id, error)
        return PredictError(
            "predict failed; quote the request id when reporting it", code=error.code
        )
    if error.internal is not None:
        logger.warning("request %s: %s (%s)", request_id, error, error.internal)
    return error


def error_response(exc: ServingError, request_id: str | None) -> JSONResponse:
    headers = {}
    if request_id is not None:
        headers[REQUEST_ID_HEADER] = request_id
    if exc.retry_after is not None:
        headers["retry-after"] = str(exc.retry_after)
    if exc.status_code == 401:
        headers["www-authenticate"] = "Bearer"
    body = ErrorBody(detail=exc.detail, code=exc.code, request_id=request_id)
    return JSONResponse(body.model_dump(), status_code=exc.status_code, headers=headers)


def failure_response(error: BaseException, request_id: str) -> JSONResponse:
    """The response for any failure of a request, after ``public_error``."""
    return error_response(public_error(error, request_id), request_id)
