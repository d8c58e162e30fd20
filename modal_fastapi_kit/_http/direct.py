"""Answering a valid JSON body without FastAPI's generic machinery.

For the kit's predict route, a request whose body is valid JSON of the request model needs
none of what FastAPI does on every request: parsing and validating in several passes, query
parameters, dependency solving, content negotiation. Two shortcuts take such a request past
it, and hand everything else back, so every other answer stays FastAPI's own:

- the **direct call** (``call_directly``), used by ``KitRoute`` wherever the router is
  mounted: the body is validated from its bytes by pydantic-core and the endpoint is called
  with the item, the kit's own API-key check done inline. Another content type, a body that
  fails, a dependency the kit did not add, or dependency overrides go FastAPI's way.
- the **front** (``_http/front.py``), in the apps the kit builds (``mfk serve``, Modal): the
  innermost middleware answers ``POST <route>`` from the route's own handler, so the direct
  call skips Starlette's exception middleware, FastAPI's exit stacks and the routing too.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import fastapi.routing
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from .auth import guard_keys, presented_key, require_key

__all__ = ["DirectCall", "call_directly", "direct_call", "effective_route", "is_json"]

DirectCall = Callable[[Request], Coroutine[Any, Any, Response | None]]

_DIRECT_ATTR = "__mfk_direct__"
# FastAPI (0.165) builds an included route's handler with the merged route in this context
# variable; without it the merged dependencies are unknown and nothing is called directly.
_EFFECTIVE_ROUTE: Any = getattr(fastapi.routing, "_effective_route_context_var", None)


def call_directly(endpoint: Callable[..., Any], request_model: type[BaseModel]) -> None:
    """Let a ``KitRoute`` call ``endpoint(request, item)`` itself for a body that is valid
    ``request_model`` JSON, without FastAPI's generic handler."""
    setattr(endpoint, _DIRECT_ATTR, request_model)


def direct_call(route: APIRoute) -> DirectCall | None:
    """The direct call for ``route`` (see ``call_directly``), or None where it cannot apply.

    The call answers ``None`` for a request it leaves to FastAPI (having read its body, which
    ``Request`` keeps for the next reader).
    """
    model: type[BaseModel] | None = getattr(route.endpoint, _DIRECT_ATTR, None)
    merged = effective_route(route)
    if model is None or merged is None:
        return None
    all_keys = guard_keys(merged.dependencies)
    if all_keys is None:
        return None
    validate = model.__pydantic_validator__.validate_json
    endpoint = route.endpoint
    overrides = getattr(merged.dependency_overrides_provider, "dependency_overrides", None)

    async def direct(request: Request) -> Response | None:
        if overrides:
            return None
        body = await request.body()
        try:
            item = validate(body)
        except ValidationError:
            return None  # FastAPI's handler answers the errors it always answered
        if all_keys:
            headers = request.headers
            presented = presented_key(headers.get("authorization"), headers.get("x-api-key"))
            for keys in all_keys:
                require_key(keys, presented)
        response: Response = await endpoint(request, item)
        return response

    return direct


def effective_route(route: APIRoute) -> Any:
    """The route as its app serves it, while its handler is built: included in another
    router, its dependencies are those of every router above it too (FastAPI's merged
    route, with ``dependant``, ``dependencies``, ``dependency_overrides_provider``). None
    where the installed FastAPI does not say."""
    if _EFFECTIVE_ROUTE is None:
        return None
    effective = _EFFECTIVE_ROUTE.get()
    return effective if effective is not None and effective.original_route is route else route


def is_json(request: Request) -> bool:
    """Whether the request says its body is ``application/json`` (FastAPI parses it then)."""
    kind = request.headers.get("content-type")
    return kind is not None and kind.partition(";")[0].strip().lower() == "application/json"
