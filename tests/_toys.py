"""Small ModelServers for unit tests: fast, deterministic, and observable."""

from __future__ import annotations

import threading
import time

from pydantic import BaseModel

from modal_fastapi_kit import ModelServer, gpu_service


class NumIn(BaseModel):
    x: int


class NumOut(BaseModel):
    y: int


class Probe:
    """Records what a toy model was asked to compute; a gate can hold it."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def run(self, xs: list[int]) -> list[int]:
        self.entered.set()
        self.gate.wait(10)
        self.batches.append(xs)
        return [2 * x for x in xs]


def doubler(probe: Probe, **options: object) -> type[ModelServer[NumIn, NumOut]]:
    """A batched server that doubles ``x`` and records its batches in ``probe``."""

    @gpu_service(name="doubler", route="/double", **options)
    class Doubler(ModelServer[NumIn, NumOut]):
        def predict_batch(self, items: list[NumIn]) -> list[NumOut]:
            if any(item.x < 0 for item in items):
                raise ValueError("negative input")
            return [NumOut(y=y) for y in probe.run([item.x for item in items])]

    return Doubler


def slow_loader(release: threading.Event) -> type[ModelServer[NumIn, NumOut]]:
    @gpu_service(name="slow-loader", route="/double")
    class SlowLoader(ModelServer[NumIn, NumOut]):
        def load(self) -> None:
            if not release.wait(30):
                raise TimeoutError("the test never released load()")

        def predict(self, item: NumIn) -> NumOut:
            return NumOut(y=2 * item.x)

    return SlowLoader


def sleeper(seconds: float, **options: object) -> type[ModelServer[NumIn, NumOut]]:
    @gpu_service(name="sleeper", route="/double", **options)
    class Sleeper(ModelServer[NumIn, NumOut]):
        def predict(self, item: NumIn) -> NumOut:
            time.sleep(seconds)
            return NumOut(y=2 * item.x)

    return Sleeper
