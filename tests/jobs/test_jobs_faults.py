"""What a job's faults do: a store that fails for a moment, a batch that raises as a whole,
a predict that answers garbage. Each stays with its job, and the service goes on."""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Any

from pydantic import BaseModel

from modal_fastapi_kit import ModelServer, gpu_service, testing
from modal_fastapi_kit._core.runtime import ModelRuntime
from modal_fastapi_kit._jobs.sqlite import SqliteJobStore

from ..services.jobbers import Counter


def finished(client: Any, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        status: dict[str, Any] = client.get(f"/count/jobs/{job_id}").json()
        if status["state"] in ("succeeded", "failed", "canceled"):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.02)


def test_a_store_that_fails_for_a_moment_delays_the_jobs_and_loses_none(monkeypatch, caplog):
    claim = SqliteJobStore.claim
    failures = []

    def flaky(self: SqliteJobStore, *args: Any, **kwargs: Any) -> Any:
        if len(failures) < 2:
            failures.append(1)
            raise sqlite3.OperationalError("database is locked")
        return claim(self, *args, **kwargs)

    monkeypatch.setattr(SqliteJobStore, "claim", flaky)
    with caplog.at_level(logging.ERROR, "modal_fastapi_kit"), testing.serve(Counter) as client:
        job = client.post("/count/jobs", json={"n": 3}).json()
        assert finished(client, job["id"])["state"] == "succeeded"
    assert len(failures) == 2
    assert "running jobs failed; trying again" in caplog.text


def test_a_batch_that_raises_as_a_whole_fails_its_jobs_and_the_next_ones_run(monkeypatch):
    run_batch = ModelRuntime.run_batch
    broken = []

    async def once_broken(self: ModelRuntime, items: list[Any], **kwargs: Any) -> Any:
        if not broken:
            broken.append(1)
            raise RuntimeError("the runtime itself broke")
        return await run_batch(self, items, **kwargs)

    monkeypatch.setattr(ModelRuntime, "run_batch", once_broken)
    with testing.serve(Counter) as client:
        first = client.post("/count/jobs", json={"n": 1}).json()
        status = finished(client, first["id"])
        assert status["state"] == "failed" and status["error"]["code"] == "predict_failed"
        second = client.post("/count/jobs", json={"n": 2}).json()
        assert finished(client, second["id"])["state"] == "succeeded"


class In(BaseModel):
    x: int


class Out(BaseModel):
    y: int


@gpu_service(name="garbled", route="/count", jobs=True)
class Garbled(ModelServer[In, Out]):
    def predict(self, item: In) -> Out:
        return {"not": "an Out"} if item.x < 0 else Out(y=item.x)  # type: ignore[return-value]


def test_a_predict_that_answers_garbage_fails_that_job_alone():
    with testing.serve(Garbled) as client:
        bad = client.post("/count/jobs", json={"x": -1}).json()
        good = client.post("/count/jobs", json={"x": 5}).json()
        status = finished(client, bad["id"])
        assert status["state"] == "failed" and status["error"]["code"] == "predict_failed"
        assert finished(client, good["id"])["state"] == "succeeded"
        assert client.get(f"/count/jobs/{good['id']}/result").json() == {"y": 5}
