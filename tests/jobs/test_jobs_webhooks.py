"""A job's webhook, end to end: ``mfk serve``-style server, real receivers over HTTP.

The receiver verifies each call with the ``standardwebhooks`` package; one that is down, slow
or answering 500 delays no job and loses no result, and what happened to the delivery shows in
the job's status."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modal_fastapi_kit import JobOptions, gpu_service
from modal_fastapi_kit.webhooks import verify_webhook

from .._servers import ThreadedServer, free_port, wait_ready
from ..services.jobbers import Counter

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()


@gpu_service(
    name="hooked",
    route="/count",
    jobs=JobOptions(allow_private_webhooks=True, webhook_attempts=3, webhook_backoff=0.1),
)
class Hooked(Counter):
    pass


class Receiver:
    """A webhook receiver on 127.0.0.1 that records each call and answers ``answers`` in
    turn (then 204); ``delay`` seconds before answering."""

    def __init__(self, answers: list[int] | None = None, delay: float = 0.0) -> None:
        self.answers = list(answers or [])
        self.delay = delay
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.verified: list[Any] = []

        async def hook(request: Request) -> Response:
            body = await request.body()
            headers = dict(request.headers)
            self.calls.append((headers, body))
            self.verified.append(Webhook(SECRET).verify(body, headers))  # raises if forged
            if self.delay:
                await asyncio.sleep(self.delay)  # holds this call only
            return Response(status_code=self.answers.pop(0) if self.answers else 204)

        self.server = ThreadedServer(Starlette(routes=[Route("/hook", hook, methods=["POST"])]))

    def __enter__(self) -> Receiver:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__()

    @property
    def url(self) -> str:
        return f"{self.server.url}/hook"


@pytest.fixture
def service(tmp_path, monkeypatch) -> Iterator[httpx.Client]:
    monkeypatch.setenv("MFK_JOBS_DB", str(tmp_path / "jobs.sqlite3"))
    monkeypatch.setenv("MFK_WEBHOOK_SECRET", SECRET)
    with ThreadedServer(Hooked.asgi_app()) as server:
        wait_ready(server.url)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            yield client


def job_with_hook(client: httpx.Client, url: str, **body: Any) -> dict[str, Any]:
    answer = client.post("/count/jobs", json={"n": 2, **body}, headers={"webhook-url": url})
    assert answer.status_code == 202, answer.text
    job: dict[str, Any] = answer.json()
    assert job["webhook"] == {
        "url": url,
        "state": "pending",
        "attempts": 0,
        "last_status": None,
        "last_error": None,
    }
    return job


def webhook_of(client: httpx.Client, job: dict[str, Any], *states: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        hook: dict[str, Any] = client.get(job["links"]["status"]).json()["webhook"]
        if hook["state"] in states:
            return hook
        assert time.monotonic() < deadline, hook
        time.sleep(0.05)


def test_a_real_receiver_gets_a_signed_call_when_the_job_ends(service):
    with Receiver() as receiver:
        job = job_with_hook(service, receiver.url, steps=2)
        result = service.get(job["links"]["result"], params={"wait": 20})
        assert result.json() == {"total": 4, "steps": 2}
        hook = webhook_of(service, job, "delivered")
    assert hook["attempts"] == 1 and hook["last_status"] == 204
    ((headers, body),) = receiver.calls
    assert headers["webhook-id"] == f"{job['id']}.succeeded"
    assert headers["content-type"] == "application/json"
    event = verify_webhook(body, headers, SECRET)
    assert event.type == "job.succeeded"
    assert event.data.id == job["id"] and event.data.state == "succeeded"
    assert event.data.links.result == job["links"]["result"]  # where to fetch the result
    assert receiver.verified[0]["data"]["id"] == job["id"]


def test_a_failed_or_canceled_job_is_told_too(service):
    with Receiver() as receiver:
        failed = job_with_hook(service, receiver.url, fail="input")
        webhook_of(service, failed, "delivered")
        long = job_with_hook(service, receiver.url, steps=100, delay=0.05)
        service.post(long["links"]["cancel"])
        webhook_of(service, long, "delivered")
    types = sorted(verify_webhook(body, headers, SECRET).type for headers, body in receiver.calls)
    assert types == ["job.canceled", "job.failed"]


def test_a_receiver_answering_500_is_tried_again_with_the_same_id(service):
    with Receiver(answers=[500, 503]) as receiver:
        job = job_with_hook(service, receiver.url)
        hook = webhook_of(service, job, "delivered")
    assert hook["attempts"] == 3 and hook["last_status"] == 204
    ids = {headers["webhook-id"] for headers, _ in receiver.calls}
    bodies = {body for _, body in receiver.calls}
    assert len(receiver.calls) == 3 and len(ids) == 1 and len(bodies) == 1


def test_a_receiver_that_is_down_loses_no_result(service):
    down = f"http://127.0.0.1:{free_port()}/hook"
    job = job_with_hook(service, down)
    result = service.get(job["links"]["result"], params={"wait": 20})
    assert result.status_code == 200 and result.json()["total"] == 2
    hook = webhook_of(service, job, "failed")
    assert hook["attempts"] == 3 and "could not connect" in hook["last_error"]
    assert service.get(job["links"]["result"]).json()["total"] == 2  # still there


def test_a_slow_receiver_delays_no_job(service):
    with Receiver(delay=4) as receiver:
        first = job_with_hook(service, receiver.url)
        assert service.get(first["links"]["result"], params={"wait": 20}).status_code == 200
        deadline = time.monotonic() + 10
        while not receiver.calls:  # the receiver is holding the first call now
            assert time.monotonic() < deadline
            time.sleep(0.02)
        began = time.monotonic()
        second = service.post("/count/jobs", json={"n": 3}).json()
        done = service.get(second["links"]["result"], params={"wait": 20})
        assert done.status_code == 200 and time.monotonic() - began < 3
        webhook_of(service, first, "delivered")


def test_a_webhook_url_is_refused_when_it_cannot_be_used(service):
    for url, says in (
        ("ftp://example.com/hook", "https"),
        ("https://user:pw@example.com/hook", "user"),
    ):
        answer = service.post("/count/jobs", json={"n": 1}, headers={"webhook-url": url})
        assert answer.status_code == 422, url
        assert answer.json()["code"] == "webhook_refused" and says in answer.json()["detail"]


def test_without_a_secret_a_webhook_is_refused_and_the_job_not_made(tmp_path, monkeypatch):
    monkeypatch.setenv("MFK_JOBS_DB", str(tmp_path / "jobs.sqlite3"))
    monkeypatch.delenv("MFK_WEBHOOK_SECRET", raising=False)
    with ThreadedServer(Hooked.asgi_app()) as server, httpx.Client(base_url=server.url) as client:
        wait_ready(server.url)
        answer = client.post(
            "/count/jobs", json={"n": 1}, headers={"webhook-url": "http://127.0.0.1:9/hook"}
        )
        assert answer.status_code == 422 and answer.json()["code"] == "webhook_refused"
        assert "MFK_WEBHOOK_SECRET" in answer.json()["detail"]


def test_private_addresses_are_refused_unless_the_service_allows_them(tmp_path, monkeypatch):
    monkeypatch.setenv("MFK_JOBS_DB", str(tmp_path / "jobs.sqlite3"))
    monkeypatch.setenv("MFK_WEBHOOK_SECRET", SECRET)
    with ThreadedServer(Counter.asgi_app()) as server, httpx.Client(base_url=server.url) as client:
        wait_ready(server.url)
        for url in ("http://127.0.0.1:9/hook", "https://127.0.0.1/hook", "https://10.0.0.8/x"):
            answer = client.post("/count/jobs", json={"n": 1}, headers={"webhook-url": url})
            assert answer.status_code == 422 and answer.json()["code"] == "webhook_refused", url


def test_a_receiver_verifies_with_either_secret_while_they_rotate(tmp_path, monkeypatch):
    new = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("MFK_JOBS_DB", str(tmp_path / "jobs.sqlite3"))
    monkeypatch.setenv("MFK_WEBHOOK_SECRET", f"{SECRET},{new}")
    with Receiver() as receiver, ThreadedServer(Hooked.asgi_app()) as server:
        wait_ready(server.url)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            job = job_with_hook(client, receiver.url)
            webhook_of(client, job, "delivered")
    ((headers, body),) = receiver.calls
    assert len(headers["webhook-signature"].split()) == 2
    for secret in (SECRET, new):
        assert Webhook(secret).verify(body, headers)["data"]["id"] == job["id"]
