"""The client's decisions without a server: each answer and transport failure is made by an
``httpx.MockTransport``, and the same cases run through the blocking and the asyncio client.

The error bodies come from the server's own ``error_response``, so every code a service can
send is read back as the exception ``ERROR_CODES`` documents, and the retry it allows; the
words of ``detail`` never change either."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from modal_fastapi_kit._http.errors import error_response
from modal_fastapi_kit.client import AsyncServiceClient, ServiceClient, error_from_answer
from modal_fastapi_kit.exceptions import (
    ERROR_CODES,
    BackendUnavailable,
    ConfigError,
    DeadlineExceeded,
    ErrorCode,
    InputError,
    PredictError,
    QueueFullError,
    Retry,
    ServingError,
    UpstreamError,
    error_for,
)

from .._toys import NumIn, NumOut, Probe, doubler

Doubler = doubler(Probe())
Handler = Callable[[httpx.Request], httpx.Response]


def kit_answer(code: ErrorCode, detail: str, *, retry_after: int | None = 0) -> httpx.Response:
    """What a service answers for an error with ``code``: the server's own error response."""
    info = ERROR_CODES[code]
    error = error_for(code, detail, status_code=info.status or 422, retry_after=retry_after)
    answer = error_response(error, "rid-server")
    headers = {k: v for k, v in answer.headers.items() if k != "content-length"}
    return httpx.Response(answer.status_code, content=bytes(answer.body), headers=headers)


def ok(y: int = 4) -> httpx.Response:
    return httpx.Response(200, json={"y": y}, headers={"x-request-id": "rid-ok"})


class Script:
    """A MockTransport handler that answers from a list, then repeats the last answer."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def predict(kind: str, script: Script, **options: Any) -> Any:
    """``predict(NumIn(x=2))`` through the blocking or the asyncio client over ``script``."""
    transport = httpx.MockTransport(script)
    if kind == "sync":
        with ServiceClient(
            Doubler, http_client=httpx.Client(transport=transport, base_url="http://svc"), **options
        ) as client:
            return client.predict(NumIn(x=2))

    async def run() -> Any:
        http = httpx.AsyncClient(transport=transport, base_url="http://svc")
        async with AsyncServiceClient(Doubler, http_client=http, **options) as client:
            try:
                return await client.predict(NumIn(x=2))
            finally:
                await http.aclose()

    return asyncio.run(run())


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_the_code_table_covers_every_code():
    assert set(ERROR_CODES) == set(ErrorCode)
    for code, info in ERROR_CODES.items():
        error = error_for(code, "x")
        assert type(error) is info.error and error.code is code
        assert info.status is None or error.status_code == info.status


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_code_the_server_sends_raises_its_documented_exception(code, kind):
    info = ERROR_CODES[code]
    script = Script(kit_answer(code, "what the server said"))
    with pytest.raises(ServingError) as caught:
        predict(kind, script, retry_for=0)
    error = caught.value
    assert type(error) is info.error
    assert (error.code, error.detail, error.request_id) == (
        code,
        "what the server said",
        "rid-server",
    )
    assert error.status_code == (info.status or 422)


@pytest.mark.parametrize("code", list(ErrorCode))
@pytest.mark.parametrize("retry_unsafe", [False, True])
def test_rewording_a_message_changes_neither_the_exception_nor_the_retries(code, retry_unsafe):
    """Every kit message, and words that used to pick other exceptions, on every code."""
    reworded = [
        "something else entirely",
        "the model failed to load",
        "the queue is full",
        "past stall_timeout",
        "cannot be reached",
        "predict failed",
        "within 3s",
    ]
    seen = set()
    for detail in reworded:
        script = Script(kit_answer(code, detail), ok())
        try:
            outcome: Any = predict("sync", script, retry_for=5, retry_unsafe=retry_unsafe)
        except ServingError as exc:
            outcome = type(exc)
        seen.add((outcome if isinstance(outcome, type) else "ok", len(script.requests)))
    assert len(seen) == 1, seen
    retried = ERROR_CODES[code].retry is Retry.SAFE or (
        retry_unsafe and ERROR_CODES[code].retry is Retry.UNSAFE
    )
    assert seen == ({("ok", 2)} if retried else {(ERROR_CODES[code].error, 1)})


def test_a_safe_error_is_retried_after_its_retry_after_until_the_answer(kind):
    script = Script(
        kit_answer(ErrorCode.NOT_READY, "loading"),
        kit_answer(ErrorCode.QUEUE_FULL, "full"),
        ok(4),
    )
    assert predict(kind, script) == NumOut(y=4)
    assert len(script.requests) == 3
    ids = {r.headers["x-request-id"] for r in script.requests}
    assert len(ids) == 1  # one call: every attempt carries its request id


def test_a_retry_after_past_the_budget_raises_at_once(kind):
    script = Script(kit_answer(ErrorCode.NOT_READY, "loading", retry_after=30), ok())
    with pytest.raises(ServingError) as caught:
        predict(kind, script, retry_for=5)
    assert caught.value.code is ErrorCode.NOT_READY and caught.value.retry_after == 30
    assert len(script.requests) == 1


def test_a_model_that_failed_to_load_is_never_retried(kind):
    script = Script(kit_answer(ErrorCode.LOAD_FAILED, "no weights", retry_after=None), ok())
    with pytest.raises(ServingError) as caught:
        predict(kind, script)
    assert caught.value.code is ErrorCode.LOAD_FAILED and len(script.requests) == 1


@pytest.mark.parametrize(
    "code", [ErrorCode.PREDICT_FAILED, ErrorCode.DEADLINE, ErrorCode.UPSTREAM_FAILED]
)
def test_what_may_have_run_is_retried_only_when_the_call_is_safe(code, kind):
    assert predict(kind, Script(kit_answer(code, "x"), ok(6)), retry_unsafe=True) == NumOut(y=6)
    script = Script(kit_answer(code, "x"), ok(6))
    with pytest.raises(ServingError):
        predict(kind, script)
    assert len(script.requests) == 1


@pytest.mark.parametrize(
    ("status", "body", "kind_of_error", "code"),
    [
        (503, b"Service Unavailable", BackendUnavailable, ErrorCode.BACKEND_UNAVAILABLE),
        (502, b"<html>Bad Gateway</html>", UpstreamError, ErrorCode.UPSTREAM_FAILED),
        (504, b"", DeadlineExceeded, ErrorCode.DEADLINE),
        (500, b"", PredictError, ErrorCode.PREDICT_FAILED),
        (429, b"slow down", QueueFullError, ErrorCode.OVERLOADED),
        (413, b"too big", InputError, ErrorCode.BODY_TOO_LARGE),
        (415, b"no such type here", InputError, ErrorCode.UNSUPPORTED_MEDIA_TYPE),
        (408, b"Request Timeout", InputError, ErrorCode.UPLOAD_TIMEOUT),
        (404, b'{"detail": "Not Found"}', InputError, ErrorCode.NOT_FOUND),
        (418, b"teapot", InputError, ErrorCode.REFUSED),
        (501, b"no", UpstreamError, ErrorCode.UPSTREAM_FAILED),
    ],
)  # fmt: skip
def test_an_answer_without_a_code_is_read_by_its_status(status, body, kind_of_error, code):
    date = "Wed, 21 Oct 2015 07:28:00 GMT"  # in the past: retry now
    error = error_from_answer(status, body, {"retry-after": date}, "r-1")
    assert type(error) is kind_of_error
    assert (error.code, error.status_code, error.request_id) == (code, status, "r-1")
    # Retry-After matters only where a retry may follow; a refused input is never retried
    assert error.retry_after == (None if kind_of_error is InputError else 0)
    shown = "Not Found" if b"detail" in body else body.decode() or f"HTTP {status} with no body"
    assert error.detail == shown


def test_a_code_from_a_newer_server_is_read_by_its_status():
    body = json.dumps({"detail": "new", "code": "warp_core_breach", "request_id": "r"}).encode()
    error = error_from_answer(503, body, {"retry-after": "inf"})
    assert type(error) is BackendUnavailable and error.retry_after is None


def test_fastapi_field_errors_are_one_line_with_their_code():
    body = json.dumps(
        {
            "detail": [{"loc": ["body", "x"], "msg": "Field required", "type": "missing"}],
            "code": "validation_failed",
            "request_id": "r-2",
        }
    ).encode()
    error = error_from_answer(422, body, {})
    assert type(error) is InputError
    assert (error.detail, error.code, error.request_id) == (
        "x: Field required",
        ErrorCode.VALIDATION_FAILED,
        "r-2",
    )


def test_a_refused_connection_is_retried_and_then_backend_unavailable(kind):
    refused = httpx.ConnectError("refused")
    assert predict(kind, Script(refused, refused, ok(8))) == NumOut(y=8)
    script = Script(refused)
    with pytest.raises(BackendUnavailable) as caught:
        predict(kind, script, retry_for=0.5)
    assert 2 <= len(script.requests) <= 4  # backoff 0.2, 0.4: the budget ends it
    assert caught.value.code is ErrorCode.BACKEND_UNAVAILABLE


def test_a_connection_broken_after_sending_is_retried_only_when_safe(kind):
    broken = httpx.ReadError("reset")
    script = Script(broken, ok())
    with pytest.raises(UpstreamError, match="may have run"):
        predict(kind, script)
    assert len(script.requests) == 1
    assert predict(kind, Script(broken, ok(10)), retry_unsafe=True) == NumOut(y=10)


def test_a_client_timeout_is_a_deadline(kind):
    with pytest.raises(DeadlineExceeded, match="client's timeout"):
        predict(kind, Script(httpx.ReadTimeout("slow")))


def test_the_request_carries_the_key_the_headers_and_the_route(kind):
    script = Script(ok())
    predict(kind, script, api_key="k-123", headers={"x-team": "ml"})
    (request,) = script.requests
    assert request.url == "http://svc/double"
    assert request.headers["authorization"] == "Bearer k-123"
    assert request.headers["x-team"] == "ml"
    assert json.loads(request.content) == {"x": 2}


def test_unknown_options_are_refused_with_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown options \['retries'\]"):
        Doubler.client("http://x", retries=3)  # type: ignore[call-arg]


# --- streams ---------------------------------------------------------------------------------


def sse(*events: str) -> httpx.Response:
    return httpx.Response(
        200, content="".join(events).encode(), headers={"content-type": "text/event-stream"}
    )


Streamer = doubler(Probe())  # a stream's chunks are read with the same response model


def chunks(kind: str, answer: httpx.Response) -> Iterator[Any]:
    from modal_fastapi_kit._client.options import ClientOptions
    from modal_fastapi_kit._client.stream import ChunkReader

    options = ClientOptions.resolve(Streamer, "http://svc", {}, borrowed_base=None, owner="client")
    reader = ChunkReader(options.service, options.shown, "rid-1")
    for line in answer.text.split("\n"):
        chunk = reader.feed(line)
        if chunk is not None:
            yield chunk


@pytest.mark.parametrize("code", [ErrorCode.PREDICT_FAILED, ErrorCode.DEADLINE, ErrorCode.STALLED])
def test_a_stream_error_event_raises_by_its_code(code):
    body = json.dumps({"detail": "reworded", "code": code.value, "request_id": "rid-s"})
    answer = sse('data: {"y": 1}\n\n', ": a comment\n", "event: error\n", f"data: {body}\n\n")
    got = []
    with pytest.raises(ServingError) as caught:
        for chunk in chunks("sync", answer):
            got.append(chunk)
    assert got == [NumOut(y=1)]
    assert type(caught.value) is ERROR_CODES[code].error
    assert (caught.value.code, caught.value.request_id) == (code, "rid-s")


def test_an_error_without_an_answer_says_nothing_of_when_to_retry(kind):
    for failure in (
        httpx.ConnectError("refused"),
        httpx.ReadError("reset"),
        httpx.ReadTimeout("t"),
    ):
        with pytest.raises(ServingError) as caught:
            predict(kind, Script(failure), retry_for=0)
        assert caught.value.retry_after is None and caught.value.request_id is not None
