"""Modal's 303 for a call past 150 s, followed by the client.

Against a real uvicorn on 127.0.0.1 whose ``Ingress`` behaves as Modal's does, with a
fraction of a second for its 150 s: a call not answered in time gets ``303 See Other`` to
the same URL plus ``__modal_function_call_id``, and a GET of that waits again for the same
call. Then the decisions alone, over ``httpx.MockTransport``: what each hop carries, where it
may go, a hop whose connection fails, and redirects that are not Modal's."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from pydantic import BaseModel

from modal_fastapi_kit import ModelServer, gpu_service
from modal_fastapi_kit.client import AsyncServiceClient, ServiceClient
from modal_fastapi_kit.exceptions import DeadlineExceeded, UpstreamError

from .._servers import ThreadedServer, wait_ready
from .._toys import NumIn, NumOut

KEY = "redirect-key-0123456789abcdef"
CALL_ID = "__modal_function_call_id"


@dataclass
class Seen:
    """One request that reached the ingress."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


class Ingress:
    """Modal's web ingress in front of an ASGI app, with ``hop`` seconds for its 150.

    A request runs the app as a call of its own; if the call has not answered within
    ``hop`` seconds, the answer is a 303 to the same URL plus ``__modal_function_call_id``.
    A GET of that URL waits up to ``hop`` seconds more for the same call (another 303 if it
    is still running), and never starts another. The health probes go straight to the app.
    ``on_request(n)`` runs as the n-th call's request arrives (1-based)."""

    def __init__(self, app: Any, hop: float, on_request: Any = None) -> None:
        self.app = app
        self.hop = hop
        self.on_request = on_request or (lambda n: None)
        self.seen: list[Seen] = []
        self.calls: dict[str, asyncio.Task[list[dict[str, Any]]]] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in ("/healthz", "/readyz"):
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        query = parse_qs(scope["query_string"].decode())
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        self.seen.append(Seen(scope["method"], scope["path"], query, headers, body))
        self.on_request(len(self.seen))
        if CALL_ID in query:
            call_id = query[CALL_ID][0]
        else:
            call_id = f"fc-{len(self.calls) + 1}"
            self.calls[call_id] = asyncio.ensure_future(self._run(scope, body))
        task = self.calls[call_id]
        done, _ = await asyncio.wait({task}, timeout=self.hop)
        if not done:
            location = f"http://{headers['host']}{scope['path']}?{CALL_ID}={call_id}"
            await send(
                {
                    "type": "http.response.start",
                    "status": 303,
                    "headers": [(b"location", location.encode()), (b"content-length", b"0")],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        for message in task.result():
            await send(message)

    async def _run(self, scope: Any, body: bytes) -> list[dict[str, Any]]:
        """The app's answer to one request, whole (its client may come back for it)."""
        sent: list[dict[str, Any]] = []
        given = False
        never = asyncio.Event()

        async def receive() -> dict[str, Any]:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            await never.wait()  # the caller stays connected, as far as the app knows
            return {"type": "http.disconnect"}

        async def collect(message: dict[str, Any]) -> None:
            sent.append(message)

        await self.app(dict(scope, query_string=b""), receive, collect)
        return sent


def long_call(gate: threading.Event) -> type[ModelServer[NumIn, NumOut]]:
    """A service whose predict runs until ``gate`` is set."""

    @gpu_service(name="long-call", route="/double", auth="api-key")
    class LongCall(ModelServer[NumIn, NumOut]):
        def predict(self, item: NumIn) -> NumOut:
            if not gate.wait(30):
                raise TimeoutError("the test never opened the gate")
            return NumOut(y=2 * item.x)

    return LongCall


@contextlib.contextmanager
def modal_like(hop: float, release_at: int | None) -> Iterator[tuple[str, Ingress, type[Any]]]:
    """A long call behind an ``Ingress``; the call ends when request ``release_at`` (the
    first GET is request 2) arrives, or when the test ends."""
    gate = threading.Event()

    def on_request(n: int) -> None:
        if n == release_at:
            gate.set()

    service = long_call(gate)
    ingress = Ingress(service.asgi_app(), hop, on_request)
    try:
        with ThreadedServer(ingress) as server:
            wait_ready(server.url, "/healthz", timeout=30)
            try:
                yield server.url, ingress, service
            finally:
                gate.set()
    finally:
        gate.set()


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MFK_API_KEYS", KEY)


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def predict(kind: str, service: type[Any], url: str, item: NumIn, **options: Any) -> Any:
    if kind == "sync":
        with ServiceClient(service, url, **options) as client:
            return client.predict_reply(item, request_id="long-1")

    async def run() -> Any:
        async with AsyncServiceClient(service, url, **options) as client:
            return await client.predict_reply(item, request_id="long-1")

    return asyncio.run(run())


# --- against a real server that answers as Modal's ingress does ---


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_a_call_redirected_twice_is_answered_at_the_end_of_the_chain(kind, keys):
    with modal_like(hop=0.3, release_at=3) as (url, ingress, service):
        reply = predict(kind, service, url, NumIn(x=21), api_key=KEY, timeout=20)
    assert reply.value == NumOut(y=42)
    assert (reply.request_id, reply.attempts) == ("long-1", 1)  # hops are not retries
    seen = ingress.seen
    assert [(s.method, s.path) for s in seen] == [
        ("POST", "/double"),
        ("GET", "/double"),
        ("GET", "/double"),
    ]
    assert len(ingress.calls) == 1  # the GETs waited for the same call
    post, *gets = seen
    assert post.body == b'{"x":21}' and post.query == {}
    for hop in gets:
        assert hop.query == {CALL_ID: ["fc-1"]}
        assert hop.body == b"" and "content-type" not in hop.headers
        assert hop.headers.get("content-length", "0") == "0"
    for request in seen:
        assert request.headers["authorization"] == f"Bearer {KEY}"
        assert request.headers["x-request-id"] == "long-1"


@pytest.mark.e2e
@pytest.mark.timeout(60)
@pytest.mark.parametrize("retry_unsafe", [False, True])
def test_a_chain_longer_than_the_timeout_ends_with_the_timeout_error(kind, keys, retry_unsafe):
    with modal_like(hop=0.25, release_at=None) as (url, ingress, service):
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as late:
            predict(
                kind, service, url, NumIn(x=1), api_key=KEY, timeout=1.0, retry_unsafe=retry_unsafe
            )
        took = time.monotonic() - started
    error = late.value
    assert error.request_id == "long-1" and error.code == "deadline"
    assert "within the client's timeout (1 s)" in error.detail
    assert "still running on Modal" in error.detail and "raise timeout=" in error.detail
    seen = ingress.seen
    assert seen[0].method == "POST" and len(seen) >= 3
    assert [s.method for s in seen[1:]] == ["GET"] * (len(seen) - 1)  # never posted again
    assert len(ingress.calls) == 1
    assert took < 15  # bounded by the timeout, not by the 30 s the call would run


# --- the decisions, over MockTransport ---


class Script:
    """A MockTransport handler: answers from ``answers`` in turn (the last one repeats);
    an answer may be an exception to raise, or a function of the request."""

    def __init__(self, *answers: Any, delay: float = 0.0) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.delay = delay

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if self.delay:
            time.sleep(self.delay)
        if isinstance(answer, Exception):
            raise answer
        return answer(request) if callable(answer) else answer


def see_other(location: str) -> httpx.Response:
    return httpx.Response(303, headers={"location": location})


def ok(y: int = 4) -> httpx.Response:
    return httpx.Response(200, json={"y": y})


def call(
    kind: str,
    script: Script,
    *,
    follow: bool = False,
    http_timeout: httpx.Timeout | None = None,
    auth: httpx.Auth | None = None,
    **options: Any,
) -> Any:
    """``predict(NumIn(x=2))`` over ``script`` through a passed-in http client that follows
    redirects itself (``follow``) or not (httpx's default), with ``http_timeout``."""
    service = long_call(threading.Event())
    transport = httpx.MockTransport(script)
    base = "http://svc.test"
    more: dict[str, Any] = {} if http_timeout is None else {"timeout": http_timeout}
    if auth is not None:
        more["auth"] = auth
    if kind == "sync":
        http = httpx.Client(transport=transport, base_url=base, follow_redirects=follow, **more)
        with http, ServiceClient(service, http_client=http, **options) as client:
            return client.predict(NumIn(x=2))

    async def run() -> Any:
        http = httpx.AsyncClient(
            transport=transport, base_url=base, follow_redirects=follow, **more
        )
        async with http, AsyncServiceClient(service, http_client=http, **options) as client:
            return await client.predict(NumIn(x=2))

    return asyncio.run(run())


@pytest.mark.parametrize("follow", [False, True])
def test_each_hop_is_a_get_with_the_key_and_without_the_body(kind, follow):
    result = "http://svc.test/double?__modal_function_call_id=fc-9"
    script = Script(see_other(result), see_other(result), ok(4))
    headers = {"modal-key": "wk-1", "modal-secret": "ws-1"}
    assert call(kind, script, follow=follow, api_key=KEY, headers=headers) == NumOut(y=4)
    post, *hops = script.requests
    assert (post.method, post.content) == ("POST", b'{"x":2}')
    assert [(r.method, str(r.url), r.content) for r in hops] == [("GET", result, b"")] * 2
    for request in script.requests:
        assert request.headers["authorization"] == f"Bearer {KEY}"
        assert request.headers["modal-key"] == "wk-1"
        assert request.headers["x-request-id"] == post.headers["x-request-id"]
    for hop in hops:
        assert "content-type" not in hop.headers and "content-length" not in hop.headers
        assert hop.headers["host"] == "svc.test"


def test_a_relative_location_is_followed_on_the_same_origin(kind):
    script = Script(see_other("/double?__modal_function_call_id=fc-1"), ok(8))
    assert call(kind, script, api_key=KEY) == NumOut(y=8)
    hop = script.requests[1]
    assert str(hop.url) == "http://svc.test/double?__modal_function_call_id=fc-1"
    assert hop.headers["authorization"] == f"Bearer {KEY}"


def test_a_hop_to_another_origin_carries_no_key_and_none_of_the_headers(kind):
    script = Script(see_other("https://elsewhere.test/double?__modal_function_call_id=f"), ok())
    call(kind, script, api_key=KEY, headers={"modal-key": "wk-1"})
    hop = script.requests[1]
    assert hop.url.host == "elsewhere.test" and hop.headers["host"] == "elsewhere.test"
    assert "authorization" not in hop.headers and "modal-key" not in hop.headers
    assert hop.headers["x-request-id"] == script.requests[0].headers["x-request-id"]


def test_a_borrowed_client_s_own_auth_does_not_follow_a_hop_to_another_origin(kind):
    script = Script(see_other("https://elsewhere.test/double?__modal_function_call_id=f"), ok())
    call(kind, script, auth=httpx.BasicAuth("user", "secret"))
    post, hop = script.requests
    assert post.headers["authorization"].startswith("Basic ")  # the client's own, as asked
    assert "authorization" not in hop.headers


def test_an_upgrade_to_https_on_the_same_host_keeps_the_key(kind):
    script = Script(see_other("https://svc.test/double?__modal_function_call_id=f"), ok())
    call(kind, script, api_key=KEY)
    assert script.requests[1].headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_other_redirects_are_not_followed_and_say_where_they_point(kind, status):
    moved = httpx.Response(status, headers={"location": "https://new.test/double"})
    script = Script(moved, ok())
    with pytest.raises(UpstreamError) as moved_away:
        call(kind, script, retry_unsafe=True)
    assert len(script.requests) == 1
    error = moved_away.value
    assert error.status_code == status and error.retry_after is None
    assert error.detail == (
        f"POST http://svc.test/double answered {status} redirecting to "
        "https://new.test/double: the service is not at this URL; pass the base_url it "
        "moved to (only a 303, Modal's answer to a long call, is followed)"
    )


def test_a_hop_whose_connection_fails_is_made_again_and_nothing_is_posted_twice(kind):
    result = "http://svc.test/double?__modal_function_call_id=fc-2"
    script = Script(
        see_other(result),
        httpx.ConnectError("refused"),
        httpx.ReadError("reset"),
        ok(6),
    )
    assert call(kind, script) == NumOut(y=6)
    assert [r.method for r in script.requests] == ["POST", "GET", "GET", "GET"]


def test_hops_that_keep_failing_end_within_the_timeout_without_a_second_post(kind):
    result = "http://svc.test/double?__modal_function_call_id=fc-3"
    script = Script(see_other(result), httpx.ConnectError("refused"))
    with pytest.raises(DeadlineExceeded, match="still running on Modal"):
        call(kind, script, timeout=1.0, retry_for=30, retry_unsafe=True)
    assert [r.method for r in script.requests][:2] == ["POST", "GET"]
    assert {r.method for r in script.requests[1:]} == {"GET"}


def test_without_a_timeout_failing_hops_end_after_retry_for(kind):
    result = "http://svc.test/double?__modal_function_call_id=fc-4"
    script = Script(see_other(result), httpx.ConnectError("refused"))
    with pytest.raises(UpstreamError) as broken:
        call(kind, script, http_timeout=httpx.Timeout(None), retry_for=0.5)
    assert "failed while waiting for the answer of a call Modal redirected" in broken.value.detail
    assert "may still be running there" in broken.value.detail
    assert {r.method for r in script.requests[1:]} == {"GET"}


def test_an_endless_chain_of_quick_303s_is_bounded_by_the_timeout(kind):
    script = Script(see_other("/double?__modal_function_call_id=fc-5"), delay=0.05)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as late:
        call(kind, script, timeout=0.5)
    assert time.monotonic() - started < 10
    assert "within the client's timeout (0.5 s)" in late.value.detail
    assert 3 <= len(script.requests) <= 100
    assert script.requests[0].method == "POST"


def test_a_303_without_a_location_is_an_error_answer(kind):
    script = Script(httpx.Response(303, text="see nothing"))
    with pytest.raises(UpstreamError) as odd:
        call(kind, script)
    assert odd.value.status_code == 303 and odd.value.detail == "see nothing"
    assert len(script.requests) == 1


class Text(BaseModel):
    text: str


class Word(BaseModel):
    word: str


@gpu_service(name="words", route="/words")
class Words(ModelServer[Text, Word]):
    def predict(self, item: Text) -> Iterator[Word]:
        for word in item.text.split():
            yield Word(word=word)


def test_a_stream_follows_the_chain_too():
    result = "http://svc.test/words?__modal_function_call_id=fc-6"
    events = b'data: {"word":"a"}\n\ndata: {"word":"b"}\n\n'
    sse = httpx.Response(200, content=events, headers={"content-type": "text/event-stream"})
    script = Script(see_other(result), sse)
    http = httpx.Client(transport=httpx.MockTransport(script), base_url="http://svc.test")
    with http, ServiceClient(Words, http_client=http, api_key=KEY) as client:
        assert [w.word for w in client.stream({"text": "a b"})] == ["a", "b"]
    assert [r.method for r in script.requests] == ["POST", "GET"]
    assert script.requests[1].headers["accept"] == "text/event-stream"
