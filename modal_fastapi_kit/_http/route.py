"""``KitRoute``: the route class of every route the kit adds, so its errors keep one shape
wherever the router is mounted.

FastAPI's exception handlers belong to the app, and the kit's router is often included in an
app it does not own. A route class travels with the router: its handler turns what the
route's dependencies and validation raise into the kit's answers, with the request id:

- a ``ServingError`` raised by a dependency (a missing API key: ``Unauthorized``) becomes
  ``error_response``: ``{"detail", "request_id"}`` and its headers;
- a ``RequestValidationError`` becomes FastAPI's 422 body (``{"detail": [errors]}``) plus the
  ``request_id``; an input that cannot be put in JSON (a lone surrogate) is left out of its
  error instead of failing the answer.

Subclasses (the OpenAI-compatible routes) change only how an error is written.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.requests import Request

from .._errors import ServingError
from .errors import REQUEST_ID_HEADER, error_response, request_id

__all__ = ["KitRoute", "validation_errors"]

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class KitRoute(APIRoute):
    """An ``APIRoute`` whose failures before the endpoint runs answer the kit's error body."""

    def get_route_handler(self) -> Handler:
        handle = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                return await handle(request)
            except ServingError as exc:
                return self.serving_error(exc, request_id(request))
            except RequestValidationError as exc:
                return self.invalid(exc, request_id(request))

        return handler

    def serving_error(self, exc: ServingError, rid: str) -> Response:
        return error_response(exc, rid)

    def invalid(self, exc: RequestValidationError, rid: str) -> Response:
        return JSONResponse(
            {"detail": validation_errors(exc), "request_id": rid},
            status_code=422,
            headers={REQUEST_ID_HEADER: rid},
        )


def validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """The errors of ``exc`` as JSON-safe dicts; an input JSON cannot hold is left out."""
    safe: list[dict[str, Any]] = []
    for error in exc.errors():
        item = {k: v for k, v in error.items() if k not in ("url", "ctx")}
        if "ctx" in error:
            item["ctx"] = {k: str(v) for k, v in error["ctx"].items()}
        if not _encodable(item):
            item.pop("input", None)
            if not _encodable(item):
                item = {"type": str(error.get("type")), "loc": [str(p) for p in error["loc"]]}
        safe.append(item)
    return safe


def _encodable(value: Any) -> bool:
    """Whether ``JSONResponse`` can render ``value`` (no NaN, no lone surrogate)."""
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError):  # UnicodeEncodeError is a ValueError
        return False
    return True
