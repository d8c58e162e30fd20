"""Streaming predicts over real HTTP (uvicorn on 127.0.0.1): SSE and NDJSON framing, chunks
flushed as they are yielded, errors before and after the first chunk, deadlines, clients that
leave mid-stream, and the OpenAPI description."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from pydantic import BaseModel

from modal_fastapi_kit import InputError, ModelServer, gpu_service

from .._servers import ThreadedServer, wait_ready

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


class Prompt(BaseModel):
    n: int
    mode: str = "plain"


class Token(BaseModel):
    index: int
    text: str


HELD = threading.Event()  # the generator waits here after its first chunk in mode "held"
CLOSED: list[str] = []


@gpu_service(name="tokens", route="/generate", chunk_timeout=1.0, first_chunk_timeout=1.0)
class Tokens(ModelServer[Prompt, Token]):
    def predict(self, item: Prompt) -> Iterator[Token]:
        if item.mode == "refuse":
            raise InputError("the prompt is empty", status_code=400)
        if item.mode == "slow-start":
            time.sleep(2)
        try:
            for i in range(item.n):
                if item.mode == "fail" and i == 2:
                    raise RuntimeError("secret internals")
                if item.mode == "stall" and i == 1:
                    time.sleep(2)
                yield Token(index=i, text=f"t{i}")
                if item.mode == "held" and i == 0:
                    assert HELD.wait(10), "the client never saw the first chunk"
        except GeneratorExit:
            CLOSED.append(item.mode)
            raise


@gpu_service(name="async-tokens", route="/generate")
class AsyncTokens(ModelServer[Prompt, Token]):
    async def predict(self, item: Prompt) -> AsyncIterator[Token]:
        for i in range(item.n):
            yield Token(index=i, text=f"a{i}")


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    with ThreadedServer(Tokens.asgi_app()) as running:
        wait_ready(running.url)
        yield running


def sse_data(body: str) -> list[dict[str, object]]:
    return [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]


def test_sse_is_one_data_event_per_chunk(server):
    response = httpx.post(f"{server.url}/generate", json={"n": 3}, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-request-id"]
    assert response.headers["cache-control"] == "no-cache"
    assert response.text == "".join(f'data: {{"index":{i},"text":"t{i}"}}\n\n' for i in range(3))


def test_ndjson_when_the_client_asks_for_it(server):
    response = httpx.post(
        f"{server.url}/generate",
        json={"n": 2},
        headers={"accept": "application/x-ndjson"},
        timeout=10,
    )
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert [json.loads(line) for line in response.text.splitlines()] == [
        {"index": 0, "text": "t0"},
        {"index": 1, "text": "t1"},
    ]


def test_an_async_generator_streams_too():
    with ThreadedServer(AsyncTokens.asgi_app()) as running:
        wait_ready(running.url)
        response = httpx.post(f"{running.url}/generate", json={"n": 2}, timeout=10)
    assert sse_data(response.text) == [{"index": 0, "text": "a0"}, {"index": 1, "text": "a1"}]


def test_a_chunk_arrives_before_the_generator_finishes(server):
    HELD.clear()
    with (
        httpx.Client(base_url=server.url, timeout=10) as client,
        client.stream("POST", "/generate", json={"n": 2, "mode": "held"}) as response,
    ):
        lines = response.iter_lines()
        first = next(line for line in lines if line)
        # The generator is still blocked after its first yield: this chunk was flushed early.
        assert json.loads(first[6:]) == {"index": 0, "text": "t0"}
        HELD.set()
        rest = [line for line in lines if line]
    assert [json.loads(line[6:])["index"] for line in rest] == [1]


def test_a_failure_after_the_first_chunk_is_an_error_event_with_the_request_id(server):
    response = httpx.post(
        f"{server.url}/generate",
        json={"n": 5, "mode": "fail"},
        headers={"x-request-id": "req-42"},
        timeout=10,
    )
    assert response.status_code == 200
    events = response.text.split("\n\n")
    assert events[:2] == ['data: {"index":0,"text":"t0"}', 'data: {"index":1,"text":"t1"}']
    assert events[2].startswith("event: error\ndata: ")
    error = json.loads(events[2].split("data: ", 1)[1])
    assert error == {
        "detail": "predict failed; quote the request id when reporting it",
        "code": "predict_failed",
        "request_id": "req-42",
    }
    assert "secret" not in response.text
    assert events[3:] == [""]  # and then the end


def test_a_failure_before_the_first_chunk_is_a_plain_error_response(server):
    response = httpx.post(f"{server.url}/generate", json={"n": 5, "mode": "refuse"}, timeout=10)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.json()["detail"] == "the prompt is empty"


def test_no_first_chunk_within_first_chunk_timeout_is_504(server):
    response = httpx.post(f"{server.url}/generate", json={"n": 2, "mode": "slow-start"}, timeout=10)
    assert response.status_code == 504
    assert "first_chunk_timeout=1s" in response.json()["detail"]


def test_a_gap_past_chunk_timeout_ends_the_stream_with_an_error_event(server):
    response = httpx.post(f"{server.url}/generate", json={"n": 3, "mode": "stall"}, timeout=10)
    events = response.text.split("\n\n")
    assert events[0] == 'data: {"index":0,"text":"t0"}'
    assert events[1].startswith("event: error\ndata: ")
    error = json.loads(events[1].split("data: ", 1)[1])
    assert "no chunk came within 1s" in error["detail"]
    assert error["code"] == "deadline"


def test_a_client_that_leaves_mid_stream_closes_the_generator(server):
    CLOSED.clear()
    with (
        httpx.Client(base_url=server.url, timeout=10) as client,
        client.stream("POST", "/generate", json={"n": 10**9, "mode": "endless"}) as response,
    ):
        lines = response.iter_lines()
        assert next(line for line in lines if line).startswith("data: ")
    # The connection is closed: the server notices, closes the stream, and the generator
    # sees GeneratorExit on the inference thread.
    for _ in range(300):
        if "endless" in CLOSED:
            break
        time.sleep(0.01)
    assert CLOSED.count("endless") == 1
    # ... and the model is free for others.
    assert len(sse_data(httpx.post(f"{server.url}/generate", json={"n": 1}).text)) == 1


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_sees_the_sse_framing(server):
    done = subprocess.run(
        ["curl", "-sN", "-X", "POST", f"{server.url}/generate", "-H",
         "content-type: application/json", "-d", '{"n": 2}'],
        capture_output=True, text=True, timeout=20, check=True,
    )  # fmt: skip
    assert done.stdout == 'data: {"index":0,"text":"t0"}\n\ndata: {"index":1,"text":"t1"}\n\n'


def test_openapi_documents_the_stream_types_and_the_chunk_schema(server):
    spec = httpx.get(f"{server.url}/openapi.json").json()
    operation = spec["paths"]["/generate"]["post"]
    content = operation["responses"]["200"]["content"]
    assert set(content) == {"text/event-stream", "application/x-ndjson"}
    assert content["application/x-ndjson"]["schema"]["$ref"] == "#/components/schemas/Token"
    # an SSE event is an object whose data is the chunk's JSON (how OpenAPI tools read events)
    event = content["text/event-stream"]["schema"]
    assert event["type"] == "object" and event["required"] == ["data"]
    data = event["properties"]["data"]
    assert data["contentMediaType"] == "application/json"
    assert data["contentSchema"]["$ref"] == "#/components/schemas/Token"
    assert "Token" in spec["components"]["schemas"]
    assert {"400", "422", "500", "503", "504"} - {"400"} <= set(operation["responses"])
