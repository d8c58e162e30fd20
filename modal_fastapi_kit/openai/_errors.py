"""OpenAI's error contract for the OpenAI-compatible routes.

Every error these routes answer is ``{"error": {"message", "type", "param", "code"}}`` with
the status the official clients map to their own exception classes (400 ``BadRequestError``,
401 ``AuthenticationError``, 404 ``NotFoundError``, 422 ``UnprocessableEntityError``, 5xx
``InternalServerError``), the kit's ``X-Request-ID`` and, where the kit sets one,
``Retry-After`` (which the clients honour when they retry).
"""

from __future__ import annotations

from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from .._http.errors import REQUEST_ID_HEADER, public_error
from .._http.route import KitRoute, validation_errors
from ..exceptions import ErrorCode, ServingError

__all__ = ["OpenAIError", "OpenAIRoute", "RequestError", "openai_error_response"]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """The body of every error the OpenAI-compatible routes answer."""

    error: OpenAIErrorDetail


class RequestError(ServingError):
    """A request these routes cannot take, in OpenAI's terms: status, ``param`` and the
    OpenAI ``code`` (``openai_code``; the kit's own ``code`` is ``invalid_input``)."""

    code = ErrorCode.INVALID_INPUT

    def __init__(
        self, message: str, *, param: str | None = None, code: str | None, status: int = 400
    ) -> None:
        super().__init__(message, status_code=status)
        self.param = param
        self.openai_code = code


# OpenAI's name where it has one for a kit's code; any other code is answered as it is.
_OPENAI_CODES: dict[ErrorCode, str] = {
    ErrorCode.UNAUTHORIZED: "invalid_api_key",
    ErrorCode.BODY_TOO_LARGE: "request_too_large",
    ErrorCode.UNREADABLE_BODY: "invalid_json",
    ErrorCode.STALLED: "model_stalled",
    ErrorCode.DEADLINE: "timeout",
    ErrorCode.PREDICT_FAILED: "internal_error",
}


def openai_error_response(error: BaseException, request_id: str) -> JSONResponse:
    """The OpenAI-shaped answer for any failure of a request (see ``public_error``)."""
    shown = public_error(error, request_id)
    status = shown.status_code
    param = getattr(shown, "param", None)
    code = getattr(shown, "openai_code", None) or _OPENAI_CODES.get(shown.code, shown.code.value)
    kind = (
        "server_error"
        if status >= 500
        else "authentication_error"
        if status == 401
        else "invalid_request_error"
    )
    body = OpenAIError(
        error=OpenAIErrorDetail(message=shown.detail, type=kind, param=param, code=code)
    )
    headers = {REQUEST_ID_HEADER: request_id}
    if shown.retry_after is not None:
        headers["retry-after"] = str(shown.retry_after)
    if status == 401:
        headers["www-authenticate"] = "Bearer"
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


class OpenAIRoute(KitRoute):
    """``KitRoute`` with OpenAI's error body; a body that fails validation is a 400."""

    def serving_error(self, exc: ServingError, rid: str) -> Response:
        return openai_error_response(exc, rid)

    def invalid(self, exc: RequestValidationError, rid: str) -> Response:
        errors = validation_errors(exc)
        first: dict[str, Any] = errors[0] if errors else {"msg": "invalid request", "loc": []}
        loc = [str(part) for part in first.get("loc", []) if part != "body"]
        param = ".".join(loc) or None
        if first.get("type") == "extra_forbidden":
            message = (
                f"{param} is not supported by this server; remove it from the request "
                "(the request fields this server takes are in its /docs)"
            )
            code = "unsupported_parameter"
        elif first.get("type") == "json_invalid":
            message = "the request body is not valid JSON"
            param, code = None, "invalid_json"
        else:
            message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
            code = "invalid_value"
        return openai_error_response(RequestError(message, param=param, code=code), rid)
