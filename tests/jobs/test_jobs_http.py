"""Jobs over real HTTP (uvicorn on 127.0.0.1): submit, status, long-poll, result, cancel,
idempotent resubmission, expiry, keys per job, failures, limits, batches and files."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from modal_fastapi_kit import JobOptions, ModelServer, gpu_service

from .._servers import ThreadedServer, wait_ready
from ..services.jobbers import (
    RUNS_ENV,
    AsyncCounter,
    BatchCounter,
    Counter,
    Shouter,
    WorkIn,
    WorkOut,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

KEY_A = "a" * 24
KEY_B = "b" * 24


@pytest.fixture(autouse=True)
def _jobs_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    runs = tmp_path / "runs.txt"
    monkeypatch.setenv("MFK_JOBS_DB", str(tmp_path / "jobs.sqlite3"))
    monkeypatch.setenv(RUNS_ENV, str(runs))
    return runs


@pytest.fixture
def runs(_jobs_db: Path) -> Path:
    return _jobs_db


def ran(runs: Path) -> list[int]:
    return [int(line) for line in runs.read_text().split()] if runs.exists() else []


def serve(cls: type[ModelServer[Any, Any]]) -> ThreadedServer:
    return ThreadedServer(cls.asgi_app())


@pytest.fixture
def counter() -> Iterator[httpx.Client]:
    with serve(Counter) as server:
        wait_ready(server.url)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield client


def submit(client: httpx.Client, path: str = "/count/jobs", **body: Any) -> dict[str, Any]:
    answer = client.post(path, json=body)
    assert answer.status_code == 202, answer.text
    return answer.json()  # type: ignore[no-any-return]


def wait_for(client: httpx.Client, job: dict[str, Any], *states: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        status = client.get(job["links"]["status"]).json()
        if status["state"] in states:
            return status  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, status
        time.sleep(0.02)


def test_submit_answers_202_with_its_status_location_and_retry_after(counter):
    answer = counter.post("/count/jobs", json={"n": 2}, headers={"x-request-id": "sub-1"})
    assert answer.status_code == 202
    job = answer.json()
    assert job["state"] in ("queued", "running")
    assert job["id"].startswith("job-") and len(job["id"]) == 36
    assert answer.headers["location"] == job["links"]["status"]
    assert job["links"]["status"] == f"{counter.base_url}/count/jobs/{job['id']}"
    assert job["links"]["result"] == job["links"]["status"] + "/result"
    assert job["links"]["cancel"] == job["links"]["status"] + "/cancel"
    assert answer.headers["retry-after"] == "1"
    assert job["request_id"] == "sub-1" and answer.headers["x-request-id"] == "sub-1"
    assert job["created_at"].endswith("Z")


def test_a_job_runs_reports_progress_and_its_result_is_the_response_model(counter, runs):
    job = submit(counter, n=3, steps=20, delay=0.05)
    running = wait_for(counter, job, "running")
    assert running["attempts"] == 1 and running["started_at"] is not None
    seen = set()
    while (status := counter.get(job["links"]["status"]).json())["state"] == "running":
        if status["progress"] is not None:
            seen.add(status["progress"]["message"])
        time.sleep(0.03)
    assert len(seen) >= 2 and all(m.startswith("step ") for m in seen), seen
    result = counter.get(job["links"]["result"])
    assert result.status_code == 200
    assert WorkOut.model_validate_json(result.content) == WorkOut(total=60, steps=20)
    done = counter.get(job["links"]["status"]).json()
    assert done["state"] == "succeeded"
    assert done["progress"] == {"fraction": 1.0, "message": "step 20 of 20"}
    assert done["finished_at"] >= done["started_at"] >= done["created_at"]
    assert done["expires_at"] is not None
    assert ran(runs) == [3]


def test_result_long_polls_within_wait_then_answers_202_with_the_status(counter):
    job = submit(counter, n=1, steps=10, delay=0.2)  # about 2 s
    began = time.monotonic()
    early = counter.get(job["links"]["result"], params={"wait": 0.3})
    assert early.status_code == 202
    assert early.json()["state"] in ("queued", "running")
    assert early.headers["retry-after"] == "1"
    assert time.monotonic() - began >= 0.3
    late = counter.get(job["links"]["result"], params={"wait": 20})
    assert late.status_code == 200 and late.json() == {"total": 10, "steps": 10}


def test_wait_is_capped_at_max_wait_and_must_not_be_negative(tmp_path):
    @gpu_service(name="capped", route="/count", jobs=JobOptions(max_wait=0.3))
    class Capped(Counter):
        pass

    with serve(Capped) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        wait_ready(server.url)
        job = submit(client, n=1, steps=1, delay=3)
        began = time.monotonic()
        assert client.get(job["links"]["result"], params={"wait": 100}).status_code == 202
        assert time.monotonic() - began < 2.5
        bad = client.get(job["links"]["result"], params={"wait": -1})
        assert bad.status_code == 422 and bad.json()["code"] == "validation_failed"


def test_an_unknown_job_is_404_on_every_route(counter):
    for method, path in (
        ("GET", "/count/jobs/job-nope"),
        ("GET", "/count/jobs/job-nope/result"),
        ("POST", "/count/jobs/job-nope/cancel"),
    ):
        answer = counter.request(method, path)
        assert answer.status_code == 404, (method, path)
        assert answer.json()["code"] == "job_not_found"
        assert "request_id" in answer.json()


def test_cancel_a_queued_job_and_it_never_runs(counter, runs):
    first = submit(counter, n=1, steps=10, delay=0.1)
    wait_for(counter, first, "running")
    second = submit(counter, n=2)
    canceled = counter.post(second["links"]["cancel"])
    assert canceled.status_code == 200 and canceled.json()["state"] == "canceled"
    again = counter.post(second["links"]["cancel"])
    assert again.status_code == 200 and again.json() == canceled.json()  # idempotent
    assert counter.get(first["links"]["result"], params={"wait": 20}).status_code == 200
    third = submit(counter, n=3)
    assert counter.get(third["links"]["result"], params={"wait": 20}).status_code == 200
    assert ran(runs) == [1, 3]
    result = counter.get(second["links"]["result"])
    assert result.status_code == 409 and result.json()["code"] == "job_canceled"


@pytest.mark.parametrize("cls", [Counter, AsyncCounter], ids=["sync", "async"])
def test_cancel_a_running_job_stops_it_and_frees_the_model(cls, runs):
    with serve(cls) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        wait_ready(server.url)
        job = submit(client, n=5, steps=1000, delay=0.05)  # 50 s unless stopped
        wait_for(client, job, "running")
        time.sleep(0.2)
        began = time.monotonic()
        canceled = client.post(job["links"]["cancel"]).json()
        assert canceled["state"] == "canceled" and canceled["finished_at"] is not None
        after = submit(client, n=6)
        answer = client.get(after["links"]["result"], params={"wait": 20})
        assert answer.status_code == 200, answer.text
        assert time.monotonic() - began < 10  # the canceled job let go of the model
        assert client.get(job["links"]["status"]).json()["state"] == "canceled"
    assert ran(runs) == [5, 6]


def test_an_idempotent_resubmission_answers_the_same_job(counter, runs):
    headers = {"idempotency-key": "order-42"}
    first = counter.post("/count/jobs", json={"n": 4}, headers=headers)
    again = counter.post("/count/jobs", json={"n": 4}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    other = counter.post("/count/jobs", json={"n": 5}, headers=headers)
    assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused"
    fresh = counter.post("/count/jobs", json={"n": 4}, headers={"idempotency-key": "order-43"})
    assert fresh.json()["id"] != first.json()["id"]
    for job in (first.json(), fresh.json()):
        assert counter.get(job["links"]["result"], params={"wait": 20}).status_code == 200
    assert sorted(ran(runs)) == [4, 4]  # two keys, two jobs; the replay ran nothing
    bad = counter.post("/count/jobs", json={"n": 4}, headers={"idempotency-key": "has space"})
    assert bad.status_code == 422 and bad.json()["code"] == "validation_failed"


def test_a_finished_job_expires_after_its_retention():
    @gpu_service(name="brief", route="/count", jobs=JobOptions(retention=1))
    class Brief(Counter):
        pass

    with serve(Brief) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        wait_ready(server.url)
        job = submit(client, n=1)
        assert client.get(job["links"]["result"], params={"wait": 20}).status_code == 200
        time.sleep(1.3)
        status = client.get(job["links"]["status"])
        assert status.status_code == 200 and status.json()["state"] == "expired"
        gone = client.get(job["links"]["result"])
        assert gone.status_code == 410 and gone.json()["code"] == "job_expired"
        time.sleep(1.5)  # the upkeep deletes what expired; the id still answers 410
        assert client.get(job["links"]["result"]).status_code == 410


def test_a_job_is_visible_only_to_the_key_that_submitted_it(monkeypatch):
    monkeypatch.setenv("MFK_API_KEYS", f"{KEY_A},{KEY_B}")

    @gpu_service(name="keyed", route="/count", auth="api-key", jobs=True)
    class Keyed(Counter):
        pass

    with serve(Keyed) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        wait_ready(server.url)
        a = {"authorization": f"Bearer {KEY_A}"}
        b = {"x-api-key": KEY_B}
        assert client.post("/count/jobs", json={"n": 1}).status_code == 401
        job = client.post("/count/jobs", json={"n": 1}, headers=a).json()
        for method, link in (("GET", "status"), ("GET", "result"), ("POST", "cancel")):
            assert client.request(method, job["links"][link]).status_code == 401
            other = client.request(method, job["links"][link], headers=b)
            assert other.status_code == 404 and other.json()["code"] == "job_not_found"
        mine = client.get(job["links"]["result"], params={"wait": 20}, headers=a)
        assert mine.status_code == 200
        # the same idempotency key under another key is another job
        one = client.post("/count/jobs", json={"n": 2}, headers={**a, "idempotency-key": "k"})
        two = client.post("/count/jobs", json={"n": 3}, headers={**b, "idempotency-key": "k"})
        assert one.status_code == two.status_code == 202
        assert one.json()["id"] != two.json()["id"]


def test_a_failed_job_says_why_and_its_result_is_its_error(counter):
    refused = submit(counter, n=1, fail="input")
    status = wait_for(counter, refused, "failed")
    assert status["error"]["code"] == "invalid_input" and status["error"]["status"] == 422
    assert "refused on purpose" in status["error"]["detail"]
    answer = counter.get(refused["links"]["result"])
    assert answer.status_code == 422 and answer.json()["code"] == "invalid_input"
    crashed = submit(counter, n=2, fail="crash")
    status = wait_for(counter, crashed, "failed")
    assert status["error"]["code"] == "predict_failed" and status["error"]["status"] == 500
    assert "on purpose" not in status["error"]["detail"]  # the model's words stay in the log
    assert "quote the job id" in status["error"]["detail"]
    answer = counter.get(crashed["links"]["result"])
    assert answer.status_code == 500 and answer.json()["code"] == "predict_failed"
    fine = submit(counter, n=3)  # and the service goes on
    assert counter.get(fine["links"]["result"], params={"wait": 20}).json()["total"] == 3


def test_a_body_the_predict_route_would_refuse_makes_no_job(counter, runs):
    for body in (b'{"n": "many"}', b"{"):
        for path in ("/count", "/count/jobs"):  # the same answer as the predict route
            answer = counter.post(path, content=body, headers={"content-type": "application/json"})
            assert answer.status_code == 422 and answer.json()["code"] == "validation_failed"
    assert ran(runs) == []


def test_max_pending_bounds_the_jobs_queued_or_running():
    @gpu_service(name="bounded", route="/count", jobs=JobOptions(max_pending=2))
    class Bounded(Counter):
        pass

    with serve(Bounded) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        wait_ready(server.url)
        first = submit(client, n=1, steps=1, delay=1)
        submit(client, n=2)
        full = client.post("/count/jobs", json={"n": 3})
        assert full.status_code == 503 and full.json()["code"] == "too_many_jobs"
        assert full.headers["retry-after"] == "5"
        assert client.get(first["links"]["result"], params={"wait": 20}).status_code == 200
        assert client.post("/count/jobs", json={"n": 4}).status_code == 202


def test_jobs_queued_together_run_as_one_batch_and_fail_alone(runs):
    router = BatchCounter.router()
    app = FastAPI()
    app.include_router(router)  # mounted in an app of the user's: the jobs come along
    with ThreadedServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        wait_ready(server.url)
        first = submit(client, n=0, steps=1, delay=1)
        wait_for(client, first, "running")
        jobs = [submit(client, n=n, fail="crash" if n == 3 else None) for n in range(1, 6)]
        for job in jobs:
            wait_for(client, job, "succeeded", "failed")
        states = [client.get(job["links"]["status"]).json()["state"] for job in jobs]
        assert states == ["succeeded", "succeeded", "failed", "succeeded", "succeeded"]
        assert client.get(jobs[1]["links"]["result"]).json() == {"total": 2, "steps": 1}
        assert router.backend.runtime.instance.batches == [[0], [1, 2, 3, 4, 5]]
    assert sorted(ran(runs)) == [0, 1, 2, 3, 4, 5]


def test_a_file_service_takes_a_multipart_job_and_answers_the_file():
    with serve(Shouter) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        wait_ready(server.url)
        answer = client.post("/shout/jobs", files={"text": ("a.txt", b"hello jobs", "text/plain")})
        assert answer.status_code == 202, answer.text
        result = client.get(answer.json()["links"]["result"], params={"wait": 20})
        assert result.status_code == 200
        assert result.content == b"HELLO JOBS"
        assert result.headers["content-type"].startswith("text/plain")
        assert 'filename="shouted.txt"' in result.headers["content-disposition"]
        raw = client.post(
            "/shout/jobs", content=b"raw body", headers={"content-type": "text/plain"}
        )
        assert raw.status_code == 202
        again = client.get(raw.json()["links"]["result"], params={"wait": 20})
        assert again.content == b"RAW BODY"


def test_a_job_may_run_past_the_request_stall_bound_but_not_its_own_run_timeout():
    @gpu_service(
        name="patient", route="/count", request_timeout=0.5, jobs=JobOptions(run_timeout=30)
    )
    class Patient(Counter):
        pass  # stall_timeout="auto": a request's call is stuck past 1 s

    @gpu_service(name="hasty", route="/count", jobs=JobOptions(run_timeout=1))
    class Hasty(Counter):
        pass

    with serve(Patient) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        wait_ready(server.url)
        job = submit(client, n=1, steps=1, delay=2.5)
        assert client.get(job["links"]["result"], params={"wait": 20}).status_code == 200
        assert client.get("/healthz").status_code == 200
    with serve(Hasty) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        wait_ready(server.url)
        job = submit(client, n=1, steps=1, delay=3)
        status = wait_for(client, job, "failed")
        assert status["error"]["code"] == "deadline" and "run_timeout" in status["error"]["detail"]


def test_metrics_count_jobs_by_state_time_in_queue_run_time_and_pending():
    @gpu_service(name="metered", route="/count", jobs=True)
    class Metered(Counter):
        pass  # a name of its own: the registry is the process's

    with serve(Metered) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        wait_ready(server.url)
        job = submit(client, n=1)
        client.get(job["links"]["result"], params={"wait": 20})
        failed = submit(client, n=1, fail="input")
        wait_for(client, failed, "failed")
        running = submit(client, n=1, steps=1, delay=2)
        wait_for(client, running, "running")
        time.sleep(1.2)  # the pending count is read at least once a second
        text = client.get("/metrics").text
        assert 'mfk_jobs_total{service="metered",state="queued"} 3.0' in text
        assert 'mfk_jobs_total{service="metered",state="succeeded"} 1.0' in text
        assert 'mfk_jobs_total{service="metered",state="failed"} 1.0' in text
        assert 'mfk_job_queue_seconds_count{service="metered"} 3.0' in text
        assert 'mfk_job_run_seconds_count{service="metered",state="succeeded"} 1.0' in text
        assert 'mfk_jobs_pending{service="metered"} 1.0' in text


def test_the_openapi_document_lists_the_job_routes(counter):
    paths = counter.get("/openapi.json").json()["paths"]
    assert set(paths) >= {
        "/count",
        "/count/jobs",
        "/count/jobs/{job_id}",
        "/count/jobs/{job_id}/result",
        "/count/jobs/{job_id}/cancel",
    }
    submit_doc = paths["/count/jobs"]["post"]
    assert "202" in submit_doc["responses"]
    assert submit_doc["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/WorkIn"
    )
    result_doc = paths["/count/jobs/{job_id}/result"]["get"]
    assert {"200", "202", "409", "410"} <= set(result_doc["responses"])


def test_streaming_and_openai_services_refuse_jobs_at_decoration():
    from modal_fastapi_kit.exceptions import ConfigError

    with pytest.raises(ConfigError, match="streams its answers and sets jobs"):

        @gpu_service(name="streamer", jobs=True)
        class Streamer(ModelServer[WorkIn, WorkOut]):
            def predict(self, item: WorkIn) -> Iterator[WorkOut]:
                yield WorkOut(total=1, steps=1)

    with pytest.raises(ConfigError, match="topology='split'"):

        @gpu_service(name="colo", topology="colocated", retries=0, jobs=True)
        class Colo(Counter):
            pass


def test_an_async_predict_is_cancelled_at_once_without_reporting_progress(runs):
    with serve(AsyncCounter) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        wait_ready(server.url)
        job = submit(client, n=8, steps=1, delay=5)  # one await of 5 s, no report before it
        wait_for(client, job, "running")
        began = time.monotonic()
        client.post(job["links"]["cancel"])
        after = submit(client, n=9)
        assert client.get(after["links"]["result"], params={"wait": 20}).status_code == 200
        assert time.monotonic() - began < 4  # the 5 s await was cancelled, not waited out
    assert ran(runs) == [8, 9]


def test_a_long_poll_whose_client_leaves_ends_with_it():
    @gpu_service(name="left-poll", route="/count", jobs=JobOptions(max_wait=60))
    class LeftPoll(Counter):
        pass  # a name of its own for its metrics

    with serve(LeftPoll) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        wait_ready(server.url)
        job = submit(client, n=1, steps=1, delay=5)
        path = f"/count/jobs/{job['id']}/result?wait=60"
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        time.sleep(0.3)
        sock.close()  # the client leaves while the server waits for the job
        deadline = time.monotonic() + 3  # well before the job ends (5 s) or the wait (60 s)
        seen = (
            'mfk_requests_total{route="/count/jobs/{job_id}/result",service="left-poll",'
            'status="499"} 1.0'
        )
        while seen not in client.get("/metrics").text:
            assert time.monotonic() < deadline, "the long-poll went on after its client left"
            time.sleep(0.05)
