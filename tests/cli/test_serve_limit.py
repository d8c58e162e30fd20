"""``mfk serve --limit-concurrency N``: above N requests at once, the answer is the kit's JSON
503 ``overloaded`` (not uvicorn's plain text), with ``Retry-After`` and the request id, and
the connection is let go; under the limit again, requests are served."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from modal_fastapi_kit.cli._process import ConcurrencyLimit

from .._servers import BIN, free_port, running, wait_ready

pytestmark = [pytest.mark.timeout(60)]


def overloaded(response: httpx.Response, rid: str) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["retry-after"] == "1"
    assert response.headers["x-request-id"] == rid
    assert response.headers["connection"] == "close"
    body = response.json()
    assert body["code"] == "overloaded"
    assert body["request_id"] == rid
    assert "--limit-concurrency" in body["detail"]


@pytest.mark.e2e
def test_requests_over_the_limit_get_the_kits_json_503_over_real_http():
    port = free_port()
    args = [str(BIN / "mfk"), "serve", "tests/services/stuck.py:Slow", "--port", str(port)]
    with running([*args, "--limit-concurrency", "2"]) as server:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)
        answers: list[httpx.Response] = []

        def post(x: int) -> None:
            answers.append(httpx.post(f"{base}/stuck", json={"x": x}, timeout=30))

        # Slow answers one request a second: two requests keep the limit reached ~2 s.
        served = [threading.Thread(target=post, args=(x,)) for x in (1, 2)]
        for thread in served:
            thread.start()
        time.sleep(0.5)
        with httpx.Client(base_url=base, timeout=10) as client:
            over = [
                client.post("/stuck", json={"x": 3}, headers={"x-request-id": f"over-{i}"})
                for i in range(3)
            ]
        for i, response in enumerate(over):
            overloaded(response, f"over-{i}")
        for thread in served:
            thread.join(10)
        assert sorted(a.json()["y"] for a in answers) == [1, 2]
        assert httpx.post(f"{base}/stuck", json={"x": 4}, timeout=10).json() == {"y": 4}
    assert "Service Unavailable" not in server.output


class Held:
    """An app whose requests wait for ``release``; one with path /fail raises."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.two_in = asyncio.Event()
        self.started = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.started += 1
        if self.started == 2:
            self.two_in.set()
        if scope["path"] == "/fail":
            raise RuntimeError("the app failed")
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def test_the_count_is_of_requests_in_flight_and_a_failure_gives_its_place_back():
    async def scenario() -> None:
        app = Held()
        limited = ConcurrencyLimit(app, 2)
        transport = httpx.ASGITransport(app=limited, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            held = [asyncio.create_task(client.get("/")) for _ in range(2)]
            await asyncio.wait_for(app.two_in.wait(), 5)
            assert limited.in_flight == 2
            overloaded(await client.get("/", headers={"x-request-id": "third"}), "third")
            assert app.started == 2  # the third never reached the app
            app.release.set()
            assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
            assert limited.in_flight == 0
            assert (await client.get("/fail")).status_code == 500
            assert limited.in_flight == 0
            assert (await client.get("/")).status_code == 200

    asyncio.run(scenario())


def test_reloaded_processes_keep_the_limit(monkeypatch):
    from modal_fastapi_kit.cli import _serve
    from modal_fastapi_kit.cli._reload import TARGET_ENV

    monkeypatch.setenv(TARGET_ENV, "tests/services/stuck.py:Slow")
    monkeypatch.setenv(_serve.LIMIT_ENV, "3")

    def limits(app: FastAPI) -> list[int]:
        return [m.kwargs["limit"] for m in app.user_middleware if m.cls is ConcurrencyLimit]

    assert limits(_serve.reloaded_app()) == [3]
    monkeypatch.setenv(_serve.LIMIT_ENV, "")
    assert limits(_serve.reloaded_app()) == []
