"""Servers around a model that does no work, so what remains is each server's request path.

    uvicorn benchmarks.apps.noop:raw_app        # ASGI by hand: read, parse, write a constant
    uvicorn benchmarks.apps.noop:fastapi_app    # one async FastAPI endpoint, the same models
    mfk serve benchmarks/apps/noop.py:Noop      # the kit, max_batch_size=32, wait_ms=5

Every one answers ``POST /embed`` with ``{"text": ...}`` by the same 384-float vector.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from modal_fastapi_kit import ModelServer, gpu_service

DIMENSIONS = 384
VECTOR = [round(0.001 * i, 3) for i in range(DIMENSIONS)]


class EmbedIn(BaseModel):
    text: str


class EmbedOut(BaseModel):
    embedding: list[float]


ANSWER = EmbedOut(embedding=VECTOR)


@gpu_service(name="noop", route="/embed", max_batch_size=32, wait_ms=5)
class Noop(ModelServer[EmbedIn, EmbedOut]):
    """A model whose batch costs nothing."""

    def predict_batch(self, items: list[EmbedIn]) -> list[EmbedOut]:
        return [ANSWER] * len(items)


@gpu_service(name="noop", route="/embed", max_batch_size=32, wait_ms=5, metrics=False)
class NoopBare(Noop):
    """No metrics, no keys: what those two cost per request, beside ``NoopGuarded``."""


@gpu_service(name="noop", route="/embed", max_batch_size=32, wait_ms=5, auth="api-key")
class NoopGuarded(Noop):
    """Metrics on and every request's key checked (``MFK_API_KEYS``, ``BENCH_AUTHORIZATION``)."""


fastapi_app = FastAPI()


@fastapi_app.post("/embed")
async def embed(item: EmbedIn) -> EmbedOut:
    return ANSWER


_RAW_BODY = json.dumps({"embedding": VECTOR}).encode()
_RAW_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_RAW_BODY)).encode()),
]


async def raw_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The least an ASGI server can do: read the body, parse it, write the constant."""
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    json.loads(body)
    await send({"type": "http.response.start", "status": 200, "headers": _RAW_HEADERS})
    await send({"type": "http.response.body", "body": _RAW_BODY})
