"""Services with jobs, for the job tests: a slow counter with progress, in its sync, async
and batched forms, and one that answers a file. Where a test says so (``$MFK_TEST_RUNS``),
each run of a job appends a line to a file, so a test can count how often a job ran."""

from __future__ import annotations

import asyncio
import os
import time

from pydantic import BaseModel, Field

from modal_fastapi_kit import File, InputError, JobOptions, ModelServer, gpu_service

RUNS_ENV = "MFK_TEST_RUNS"


class WorkIn(BaseModel):
    n: int
    steps: int = Field(default=1, ge=1, le=10_000)
    delay: float = Field(default=0.0, ge=0.0, le=5.0)  # seconds per step
    fail: str | None = None  # "input": an InputError; "crash": a ValueError


class WorkOut(BaseModel):
    total: int
    steps: int


def _note(item: WorkIn) -> None:
    path = os.environ.get(RUNS_ENV)
    if path:
        with open(path, "a") as runs:
            runs.write(f"{item.n}\n")


def _check(item: WorkIn) -> None:
    if item.fail == "input":
        raise InputError(f"n={item.n} is refused on purpose")
    if item.fail == "crash":
        raise ValueError(f"n={item.n} crashes on purpose")


@gpu_service(name="counter", route="/count", jobs=JobOptions(run_timeout=60, max_pending=50))
class Counter(ModelServer[WorkIn, WorkOut]):
    """Counts ``steps`` times, ``delay`` seconds apart, reporting progress at each step."""

    def predict(self, item: WorkIn) -> WorkOut:
        _note(item)
        _check(item)
        for step in range(item.steps):
            time.sleep(item.delay)
            self.progress((step + 1) / item.steps, f"step {step + 1} of {item.steps}")
        return WorkOut(total=item.n * item.steps, steps=item.steps)


@gpu_service(name="async-counter", route="/count", jobs=True)
class AsyncCounter(ModelServer[WorkIn, WorkOut]):
    """``Counter`` as an ``async def predict``: a cancel stops it at its next await."""

    async def predict(self, item: WorkIn) -> WorkOut:
        _note(item)
        _check(item)
        for step in range(item.steps):
            await asyncio.sleep(item.delay)
            self.progress((step + 1) / item.steps)
        return WorkOut(total=item.n * item.steps, steps=item.steps)


@gpu_service(name="batch-counter", route="/count", max_batch_size=8, jobs=True)
class BatchCounter(ModelServer[WorkIn, WorkOut]):
    """``Counter`` over a batch: the jobs queued together run as one call."""

    def load(self) -> None:
        self.batches: list[list[int]] = []

    def predict_batch(self, items: list[WorkIn]) -> list[WorkOut | Exception]:
        self.batches.append([item.n for item in items])
        answers: list[WorkOut | Exception] = []
        for item in items:
            _note(item)
            try:
                _check(item)
            except Exception as exc:
                answers.append(exc)
                continue
            answers.append(WorkOut(total=item.n * item.steps, steps=item.steps))
        steps = max(item.steps for item in items)
        for step in range(steps):
            time.sleep(max(item.delay for item in items))
            self.progress((step + 1) / steps)
        return answers


class TextIn(BaseModel):
    text: File


@gpu_service(name="shouter", route="/shout", jobs=True)
class Shouter(ModelServer[TextIn, File]):
    """Answers the uploaded text in capitals, as a file."""

    def predict(self, item: TextIn) -> File:
        data = item.text.read().upper()
        return File(data, content_type="text/plain", filename="shouted.txt")
