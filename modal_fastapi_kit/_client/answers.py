"""Reading what a service answered: an error body into the kit's exception, by its ``code``.

The kit's error body is ``{"detail", "code", "request_id"}``. The ``code`` alone decides the
exception (``ERROR_CODES``); the words of ``detail`` never do, so rewording a server's
message cannot change what a client raises or whether it retries. An answer without a code
(a proxy's page, FastAPI's own 404) is read by its status alone.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping
from typing import Any

from .._protocol import REQUEST_ID_HEADER
from ..exceptions import ErrorCode, ServingError, error_for

__all__ = ["code_for_status", "error_from_answer", "read_error_body", "retry_after_seconds"]

# What an answer with no kit code is taken for, by its status.
_BY_STATUS: dict[int, ErrorCode] = {
    400: ErrorCode.UNREADABLE_BODY,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    408: ErrorCode.UPLOAD_TIMEOUT,
    413: ErrorCode.BODY_TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    422: ErrorCode.VALIDATION_FAILED,
    429: ErrorCode.OVERLOADED,
    500: ErrorCode.PREDICT_FAILED,
    502: ErrorCode.UPSTREAM_FAILED,
    503: ErrorCode.BACKEND_UNAVAILABLE,
    504: ErrorCode.DEADLINE,
}


def code_for_status(status: int) -> ErrorCode:
    """The code an answer without one stands for: by its status, a refusal for another 4xx,
    an upstream failure for another 5xx."""
    found = _BY_STATUS.get(status)
    if found is not None:
        return found
    return ErrorCode.REFUSED if 400 <= status <= 499 else ErrorCode.UPSTREAM_FAILED


def error_from_answer(
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    request_id: str | None = None,
) -> ServingError:
    """The kit's exception for an error answer, chosen by the body's ``code`` (see
    ``ERROR_CODES``), else by the status; with the status, ``Retry-After`` and request id."""
    detail, code, said_id = read_error_body(body, status)
    if code is None:
        code = code_for_status(status)
    return error_for(
        code,
        detail,
        status_code=status,
        retry_after=None if status == 401 else retry_after_seconds(headers.get("retry-after")),
        request_id=said_id or headers.get(REQUEST_ID_HEADER) or request_id,
    )


def read_error_body(body: bytes, status: int) -> tuple[str, ErrorCode | None, str | None]:
    """``(detail, code, request_id)`` of an error body: the kit's JSON, FastAPI's field
    errors, or whatever text a proxy answered (then no code and no id)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and "detail" in parsed:
        detail = parsed["detail"]
        said = parsed.get("request_id")
        text = _field_errors(detail) if isinstance(detail, list) else str(detail)
        return text, _code(parsed.get("code")), said if isinstance(said, str) else None
    text = body.decode("utf-8", "replace").strip()[:300]
    return text or f"HTTP {status} with no body", None, None


def _code(value: Any) -> ErrorCode | None:
    try:
        return ErrorCode(value)
    except ValueError:  # none, or one from a newer server: read the status instead
        return None


def _field_errors(errors: list[Any]) -> str:
    """FastAPI's 422 list as one line: ``text: String should have at least 1 character``."""
    parts = []
    for error in errors:
        if not isinstance(error, dict):
            parts.append(str(error))
            continue
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        parts.append(f"{where}: {error.get('msg', error)}")
    return "; ".join(parts)


def retry_after_seconds(value: str | None) -> int | None:
    """``Retry-After`` in whole seconds (it may be a number or an HTTP date), or None."""
    if value is None:
        return None
    try:
        return max(0, int(float(value)))
    except (ValueError, OverflowError):
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0, int(when.timestamp() - time.time() + 0.999))
