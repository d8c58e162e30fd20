"""A service whose predict never returns, for `mfk serve` shutdown tests."""

from __future__ import annotations

import time

from pydantic import BaseModel

from modal_fastapi_kit import ModelServer, gpu_service


class In(BaseModel):
    x: int


class Out(BaseModel):
    y: int


@gpu_service(name="stuck", route="/stuck", request_timeout=2, stall_timeout=30)
class Stuck(ModelServer[In, Out]):
    def predict(self, item: In) -> Out:
        time.sleep(3600)  # a hung CUDA call, a deadlock: nothing the server can interrupt
        return Out(y=item.x)


@gpu_service(name="stuck-noticed", route="/stuck", request_timeout=20, stall_timeout=1)
class StuckNoticed(Stuck):
    """The same hang, found by the watchdog after one second."""


@gpu_service(name="slow", route="/stuck", request_timeout=10)
class Slow(ModelServer[In, Out]):
    """One second per answer: a request in flight when the server is told to stop."""

    def predict(self, item: In) -> Out:
        time.sleep(1)
        return Out(y=item.x)
