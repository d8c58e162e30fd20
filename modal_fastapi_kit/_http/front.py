"""The front: in the apps the kit builds (``mfk serve``, Modal), the innermost middleware
answers ``POST <route>`` from the route's own handler, so a valid JSON body skips Starlette's
exception middleware, FastAPI's exit stacks and the routing (``_http/direct.py`` says what
the direct call takes). What the direct call leaves is handed to the app with the body it
read.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .direct import direct_call
from .route import KitRoute

__all__ = ["DirectFront", "install_front"]


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
