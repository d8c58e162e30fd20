"""A service that says which event loop runs it, for `mfk serve` tests."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel

from modal_fastapi_kit import ModelServer, gpu_service


class In(BaseModel):
    x: int


class Out(BaseModel):
    loop: str


@gpu_service(name="loopy", route="/loop", request_timeout=5)
class Loopy(ModelServer[In, Out]):
    async def predict(self, item: In) -> Out:
        loop = type(asyncio.get_running_loop())
        return Out(loop=f"{loop.__module__}.{loop.__qualname__}")
