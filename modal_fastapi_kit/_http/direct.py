"""Answering a valid JSON body without FastAPI's generic machinery.

For the kit's predict route, a request whose body is valid JSON of the request model needs
none of what FastAPI does on every request: parsing and validating in several passes, query
parameters, dependency solving, content negotiation. Two shortcuts take such a request past
it, and hand everything else back, so every other answer stays FastAPI's own:

- the **direct call** (``call_directly``), used by ``KitRoute`` wherever the router is
  mounted: the body is validated from its bytes by pydantic-core and the endpoint is called
  with the item, the kit's own API-key check done inline. Another content type, a body that
  fails, a dependency the kit did not add, or dependency overrides go FastAPI's way.
- the **front** (``DirectFront``), in the apps the kit builds (``mfk serve``, Modal): the
  innermost middleware answers ``POST <route>`` from the route's own handler, so the direct
  call skips Starlette's exception middleware, FastAPI's exit stacks and the routing too.
  What the direct call leaves is handed to the app with the body it read.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import fastapi.routing
from fastapi import FastAPI
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .auth import guard_keys, presented_key, require_key

if TYPE_CHECKING:
    from .route import KitRoute

__all__ = ["DirectCall", "DirectFront", "call_directly", "direct_call", "install_front", "is_json"]

DirectCall = Callable[[Request], Coroutine[Any, Any, Response | None]]

_DIRECT_ATTR = "__mfk_direct__"
# FastAPI (0.165) builds an included route's handler with the merged route in this context
# variable; without it the merged dependencies are unknown and nothing is called directly.
_EFFECTIVE_ROUTE: Any = getattr(fastapi.routing, "_effective_route_context_var", None)


def call_directly(endpoint: Callable[..., Any], request_model: type[BaseModel]) -> None:
    """Let a ``KitRoute`` call ``endpoint(request, item)`` itself for a body that is valid
    ``request_model`` JSON, without FastAPI's generic handler."""
    setattr(endpoint, _DIRECT_ATTR, request_model)


def direct_call(route: KitRoute) -> DirectCall | None:
    """The direct call for ``route`` (see ``call_directly``), or None where it cannot apply.

    The call answers ``None`` for a request it leaves to FastAPI (having read its body, which
    ``Request`` keeps for the next reader).
    """
    model: type[BaseModel] | None = getattr(route.endpoint, _DIRECT_ATTR, None)
    if model is None or _EFFECTIVE_ROUTE is None:
        return None
    # Included in another router, a route's dependencies are those of every router above it.
    effective = _EFFECTIVE_ROUTE.get()
    merged = effective if effective is not None and effective.original_route is route else route
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


def is_json(request: Request) -> bool:
    """Whether the request says its body is ``application/json`` (FastAPI parses it then)."""
    kind = request.headers.get("content-type")
    return kind is not None and kind.partition(";")[0].strip().lower() == "application/json"


class _HandBack(Exception):
    """The direct call left this request to the app."""


async def _hand_back(request: Request) -> Response:
    raise _HandBack


class DirectFront:
    """Answers ``POST <route>`` of an app the kit built from the route's own handler (see the
    module's docstring); every other request, and what the handler hands back, goes to
    ``app``."""

    def __init__(self, app: ASGIApp, *, owner: FastAPI, route: KitRoute) -> None:
        self.app = app
        self.owner = owner
        self.path = route.path
        self.handler = route.kit_handler(_hand_back)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != self.path
            or scope["method"] != "POST"
            or scope.get("root_path")
            or self.owner.dependency_overrides
        ):
            await self.app(scope, receive, send)
            return
        body = _BodyTap(receive)
        try:
            response = await self.handler(Request(scope, body.receive))
        except _HandBack:
            await self.app(scope, body.replay(), send)
            return
        await response(scope, body.receive, send)


class _BodyTap:
    """A ``receive`` that keeps the body it passes on, to hand it to the app again."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._chunks: list[bytes] = []
        self._done = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self._chunks.append(message.get("body", b""))
            self._done = not message.get("more_body", False)
        return message

    def replay(self) -> Receive:
        """What the app reads: the body read so far, then the rest from the client."""
        if not self._chunks:
            return self._receive
        pending: list[Message] = [
            {"type": "http.request", "body": b"".join(self._chunks), "more_body": not self._done}
        ]

        async def receive() -> Message:
            return pending.pop() if pending else await self._receive()

        return receive


def install_front(app: FastAPI, route: KitRoute) -> None:
    """Put a ``DirectFront`` for ``route`` innermost among ``app``'s middleware (inside any
    added later, such as the origin lock), when its direct call applies there."""
    if direct_call(route) is None or app.router.dependencies:
        return
    app.add_middleware(DirectFront, owner=app, route=route)
