"""``Cls.client(url)`` / ``Cls.async_client(url)`` over real HTTP on 127.0.0.1 (the decisions
alone, without a server, are in ``tests/client/``): typed results,
streams, retries (Retry-After, refused connections, never what may have run), keys, errors
mapped to the kit's exceptions with the request id, and the code of docs/testing.md against
the served examples."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, Field

from modal_fastapi_kit import InputError, ModelServer, gpu_service
from modal_fastapi_kit.client import Reply, ServiceClient
from modal_fastapi_kit.exceptions import (
    BackendUnavailable,
    ConfigError,
    DeadlineExceeded,
    LoadFailed,
    NotReadyError,
    PredictError,
    QueueFullError,
    Unauthorized,
    UpstreamError,
)
from modal_fastapi_kit.openai import EmbeddingServer

from .._servers import BIN, ROOT, ThreadedServer, free_port, running, wait_ready
from .._toys import NumIn, NumOut, Probe, doubler

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

KEY = "client-key-0123456789abcdef"


class Recorder:
    """ASGI middleware: the headers of every POST that reached the app."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.posts: list[dict[str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            self.posts.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await self.app(scope, receive, send)


@contextlib.contextmanager
def served(app: Any, readyz: str = "/readyz") -> Iterator[str]:
    with ThreadedServer(app) as server:
        wait_ready(server.url, readyz, timeout=30)
        yield server.url


class Text(BaseModel):
    text: str = Field(min_length=1)


class Word(BaseModel):
    word: str


@gpu_service(name="words", route="/words")
class Words(ModelServer[Text, Word]):
    def predict(self, item: Text) -> Iterator[Word]:
        for word in item.text.split():
            if word == "boom":
                raise RuntimeError("exploded")
            yield Word(word=word)


class Failing:
    """A service whose predict raises (or sleeps), counting its calls."""

    def __init__(self, sleep: float = 0.0, **options: Any) -> None:
        self.calls = 0
        failing = self

        @gpu_service(name="failing", route="/double", **options)
        class Service(ModelServer[NumIn, NumOut]):
            def predict(self, item: NumIn) -> NumOut:
                failing.calls += 1
                if sleep:
                    time.sleep(sleep)
                    return NumOut(y=item.x)
                if item.x == 413:
                    raise InputError("x is too large; send at most 100", status_code=413)
                raise ValueError("model exploded")

        self.cls = Service


@gpu_service(name="broken", route="/double")
class Broken(ModelServer[NumIn, NumOut]):
    def load(self) -> None:
        raise RuntimeError("no weights")

    def predict(self, item: NumIn) -> NumOut:
        return NumOut(y=item.x)


# --- typed results, request ids, prefixes ---


def test_predict_returns_the_response_model_and_sends_the_request_id():
    Doubler = doubler(Probe())
    app = Recorder(Doubler.asgi_app())
    with served(app) as url, Doubler.client(url) as client:
        assert client.url == f"{url}/double"
        answer = client.predict(NumIn(x=21))
        assert type(answer) is NumOut and answer.y == 42
        reply = client.predict_reply({"x": 2})
        assert isinstance(reply, Reply) and reply.value == NumOut(y=4) and reply.attempts == 1
        assert re.fullmatch(r"[0-9a-f]{32}", reply.request_id)
        mine = client.predict_reply(NumIn(x=3), request_id="order-7")
        assert mine.request_id == "order-7"
    assert app.posts[1]["x-request-id"] == reply.request_id
    assert app.posts[2]["x-request-id"] == "order-7"
    assert app.posts[0]["content-type"] == "application/json"
    assert "authorization" not in app.posts[0]


@pytest.mark.parametrize("suffix", ["/ml", "/ml/"])
def test_a_router_mounted_under_a_prefix(suffix):
    Doubler = doubler(Probe())
    app = FastAPI()
    app.include_router(Doubler.router(), prefix="/ml")
    with served(app, "/ml/readyz") as url, Doubler.client(url + suffix) as client:
        assert client.url == f"{url}/ml/double"
        assert client.predict(NumIn(x=5)).y == 10


def test_an_item_is_checked_before_it_is_sent():
    Doubler = doubler(Probe())
    with Doubler.client("http://127.0.0.1:9") as client:  # nothing is sent
        with pytest.raises(InputError) as bad:
            client.predict({"x": "many"})
        assert bad.value.status_code == 422 and bad.value.request_id is None
        assert str(bad.value).startswith("the item is not a valid NumIn: x: Input should be")
        with pytest.raises(TypeError, match=r"Doubler takes a NumIn .*not Word"):
            client.predict(Word(word="x"))  # type: ignore[arg-type]


# --- streaming ---


def test_stream_yields_response_models_as_they_come():
    with served(Words.asgi_app()) as url, Words.client(url) as client:
        with client.stream(Text(text="one two three"), request_id="s-1") as words:
            assert words.request_id == "s-1"
            assert list(words) == [Word(word="one"), Word(word="two"), Word(word="three")]
        assert words.count == 3 and words.attempts == 1
        assert [w.word for w in client.stream({"text": "a b"})] == ["a", "b"]  # no with


def test_a_stream_that_fails_raises_with_its_request_id():
    with served(Words.asgi_app()) as url, Words.client(url) as client:
        before = client.stream(Text(text="boom"), request_id="s-2")  # fails before a chunk: 500
        with pytest.raises(PredictError) as failed, before:
            pass
        assert (failed.value.status_code, failed.value.request_id) == (500, "s-2")
        got: list[str] = []
        with pytest.raises(PredictError) as late:  # after a chunk: an error event
            for word in client.stream(Text(text="a boom"), request_id="s-3"):
                got.append(word.word)
        assert got == ["a"]
        assert late.value.detail == "predict failed; quote the request id when reporting it"
        assert late.value.request_id == "s-3"


def test_leaving_a_stream_early_stops_the_generator_on_the_server():
    stopped = threading.Event()

    @gpu_service(name="ticker", route="/tick")
    class Ticker(ModelServer[Text, Word]):
        def predict(self, item: Text) -> Iterator[Word]:
            try:
                for n in range(1000):
                    time.sleep(0.01)
                    yield Word(word=f"{item.text}{n}")
            except GeneratorExit:
                stopped.set()
                raise

    with served(Ticker.asgi_app()) as url, Ticker.client(url) as client:
        with client.stream(Text(text="t")) as ticks:
            assert [next(ticks).word, next(ticks).word] == ["t0", "t1"]
        assert stopped.wait(5)


def test_predict_and_stream_say_which_one_to_call():
    words = Words.client("http://127.0.0.1:9")
    with pytest.raises(TypeError, match=r"Words streams its answer: iterate client.stream"):
        words.predict(Text(text="a"))
    numbers = doubler(Probe()).client("http://127.0.0.1:9")
    with pytest.raises(TypeError, match=r"not a stream: call client.predict\(item\)"):
        numbers.stream(NumIn(x=1))
    words.close()
    numbers.close()


# --- retries ---


def test_a_full_queue_is_retried_after_its_retry_after():
    probe = Probe()
    Doubler = doubler(probe, max_queue_size=1)
    router = Doubler.router()
    app = Recorder(FastAPI())
    app.app.include_router(router)
    probe.gate.clear()
    with served(app) as url, httpx.Client(base_url=url, timeout=30) as raw:
        busy: list[httpx.Response] = []
        first = threading.Thread(target=lambda: busy.append(raw.post("/double", json={"x": 1})))
        first.start()
        assert probe.entered.wait(10)  # x=1 holds the model
        second = threading.Thread(target=lambda: busy.append(raw.post("/double", json={"x": 2})))
        second.start()
        deadline = time.monotonic() + 10
        while router.backend.queue_depth < 1:  # x=2 fills the queue
            assert time.monotonic() < deadline
            time.sleep(0.01)

        # A budget shorter than Retry-After: 1 raises the 503 at once, typed.
        with Doubler.client(url, retry_for=0.5) as impatient:
            started = time.monotonic()
            with pytest.raises(QueueFullError) as full:
                impatient.predict(NumIn(x=3), request_id="q-1")
        assert time.monotonic() - started < 0.4
        assert (full.value.status_code, full.value.retry_after) == (503, 1)
        assert full.value.request_id == "q-1"
        assert full.value.detail == "the queue is full (1 requests waiting); retry shortly"

        # With time to wait, the client sleeps Retry-After and tries again.
        threading.Timer(0.3, probe.gate.set).start()
        with Doubler.client(url, retry_for=10) as patient:
            started = time.monotonic()
            reply = patient.predict_reply(NumIn(x=3), request_id="q-2")
            took = time.monotonic() - started
        first.join(10)
        second.join(10)
    assert reply.value == NumOut(y=6) and reply.attempts == 2
    assert 0.95 <= took < 3, took  # Retry-After: 1, not the 0.2 s backoff
    sent = [p.get("x-request-id") for p in app.posts if p.get("x-request-id") == "q-2"]
    assert sent == ["q-2", "q-2"]  # one id across the retry


def test_a_500_is_not_retried_unless_the_call_is_safe():
    failing = Failing()
    with served(failing.cls.asgi_app()) as url:
        with failing.cls.client(url, retry_for=5) as client, pytest.raises(PredictError) as failed:
            client.predict(NumIn(x=1), request_id="p-1")
        assert failing.calls == 1
        error = failed.value
        assert (error.status_code, error.request_id) == (500, "p-1")
        assert error.detail == "predict failed; quote the request id when reporting it"

        safe = failing.cls.client(url, retry_for=1, retry_unsafe=True)
        with safe, pytest.raises(PredictError):
            safe.predict(NumIn(x=1))
        assert failing.calls >= 3  # 1 + retries after 0.2 s, 0.4 s (+ 0.8 s > 1 s: stop)


def test_a_4xx_from_the_model_keeps_its_status_and_message():
    failing = Failing()
    with (
        served(failing.cls.asgi_app()) as url,
        failing.cls.client(url) as client,
        pytest.raises(InputError) as refused,
    ):
        client.predict(NumIn(x=413), request_id="i-1")
    assert (refused.value.status_code, refused.value.request_id) == (413, "i-1")
    assert refused.value.detail == "x is too large; send at most 100"
    assert failing.calls == 1


def test_a_server_422_is_an_input_error_with_the_fields():
    with (
        served(Words.asgi_app()) as url,
        Words.client(url) as client,
        pytest.raises(InputError) as invalid,
        client.stream(Text.model_construct(text="")),
    ):
        pass
    assert invalid.value.status_code == 422
    assert invalid.value.detail == "text: String should have at least 1 character"
    assert invalid.value.request_id is not None


def test_a_504_and_a_client_timeout_are_deadlines_and_not_retried():
    slow = Failing(sleep=0.6, request_timeout=0.2)
    with served(slow.cls.asgi_app()) as url:
        with slow.cls.client(url, retry_for=5) as client, pytest.raises(DeadlineExceeded) as late:
            client.predict(NumIn(x=1))
        assert late.value.status_code == 504
        assert late.value.detail == "no result within request_timeout=0.2s"
        time.sleep(0.6)  # the model call ends
        quick = slow.cls.client(url, timeout=0.1, retry_for=5)
        with quick, pytest.raises(DeadlineExceeded, match=r"within the client's timeout"):
            quick.predict(NumIn(x=2), request_id="t-1")
        time.sleep(0.6)
    assert slow.calls == 2


def test_a_model_that_failed_to_load_is_not_waited_for():
    with served_failed(Broken) as url, Broken.client(url, retry_for=10) as client:
        started = time.monotonic()
        with pytest.raises(LoadFailed) as failed:
            client.predict(NumIn(x=1))
        assert time.monotonic() - started < 1
    assert (failed.value.status_code, failed.value.retry_after) == (503, None)
    assert failed.value.detail == "the model failed to load; the server's log says why"


@contextlib.contextmanager
def served_failed(cls: type[ModelServer]) -> Iterator[str]:
    with ThreadedServer(cls.asgi_app()) as server:
        deadline = time.monotonic() + 10
        while httpx.get(f"{server.url}/healthz").status_code != 503:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        yield server.url


def test_still_loading_past_the_budget_is_a_not_ready_error():
    release = threading.Event()

    @gpu_service(name="slow", route="/double")
    class Slow(ModelServer[NumIn, NumOut]):
        def load(self) -> None:
            release.wait(10)

        def predict(self, item: NumIn) -> NumOut:
            return NumOut(y=item.x)

    with ThreadedServer(Slow.asgi_app()) as server, Slow.client(server.url, retry_for=1) as c:
        try:
            with pytest.raises(NotReadyError) as loading:
                c.predict(NumIn(x=1))
        finally:
            release.set()
    assert type(loading.value) is NotReadyError
    assert (loading.value.status_code, loading.value.retry_after) == (503, 5)
    assert loading.value.detail == "the model is still loading; retry shortly"


def test_a_refused_connection_is_retried_until_the_server_is_up():
    Doubler = doubler(Probe())
    server = ThreadedServer(Doubler.asgi_app())
    answers: list[NumOut] = []
    with Doubler.client(server.url, retry_for=20) as client:
        caller = threading.Thread(target=lambda: answers.append(client.predict(NumIn(x=4))))
        caller.start()
        time.sleep(0.5)  # a few refused connections
        with server:
            caller.join(20)
    assert answers == [NumOut(y=8)]


def test_a_refused_connection_past_the_budget_is_backend_unavailable():
    Doubler = doubler(Probe())
    url = f"http://127.0.0.1:{free_port()}"
    with Doubler.client(url, retry_for=0.5) as client:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable) as down:
            client.predict(NumIn(x=1), request_id="c-1")
        assert 0.18 <= time.monotonic() - started < 2  # retried after 0.2 s; 0.4 s more: no
    assert str(down.value).startswith(f"cannot connect to {url}/double: ConnectError")
    assert (down.value.status_code, down.value.request_id) == (503, "c-1")


class Hangup:
    """A socket server that reads each request and closes the connection without answering."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests = 0
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    if b"\r\n\r\n" in conn.recv(65536):
                        self.requests += 1

    def __enter__(self) -> Hangup:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping = True
        self.thread.join(5)
        self.sock.close()


def test_a_connection_broken_after_sending_is_not_retried_unless_safe():
    Doubler = doubler(Probe())
    with Hangup() as hangup:
        client = Doubler.client(hangup.url, retry_for=5)
        with client, pytest.raises(UpstreamError) as broke:
            client.predict(NumIn(x=1), request_id="b-1")
        assert hangup.requests == 1
        assert "broke after the request was sent" in broke.value.detail
        assert "pass retry_unsafe=True" in broke.value.detail
        assert broke.value.request_id == "b-1"
        safe = Doubler.client(hangup.url, retry_for=0.5, retry_unsafe=True)
        with safe, pytest.raises(UpstreamError, match="retries ran out"):
            safe.predict(NumIn(x=1))
        assert hangup.requests >= 3


# --- keys ---


def test_the_api_key_is_sent_as_a_bearer_token(monkeypatch):
    monkeypatch.setenv("MFK_API_KEYS", KEY)

    @gpu_service(name="keyed", route="/double", auth="api-key")
    class Keyed(ModelServer[NumIn, NumOut]):
        def predict(self, item: NumIn) -> NumOut:
            return NumOut(y=2 * item.x)

    app = Recorder(Keyed.asgi_app())
    with served(app) as url:
        with Keyed.client(url, retry_for=5) as anonymous:
            started = time.monotonic()
            with pytest.raises(Unauthorized) as refused:
                anonymous.predict(NumIn(x=1), request_id="k-1")
            assert time.monotonic() - started < 1  # not retried
        assert (refused.value.status_code, refused.value.request_id) == (401, "k-1")
        assert refused.value.detail.startswith("a valid API key is required")
        with Keyed.client(url, api_key=KEY) as client:
            assert client.predict(NumIn(x=4)).y == 8
    assert app.posts[-1]["authorization"] == f"Bearer {KEY}"


# --- async ---


async def test_the_async_client_predicts_streams_and_maps_errors():
    Doubler = doubler(Probe(), max_batch_size=8, wait_ms=20)
    failing = Failing()
    app = FastAPI()
    app.include_router(Doubler.router(), prefix="/num")
    app.include_router(Words.router(), prefix="/text")
    app.include_router(failing.cls.router(), prefix="/bad")
    with served(app, "/num/readyz") as url:
        async with Doubler.async_client(url + "/num") as numbers:
            answers = await asyncio.gather(*(numbers.predict(NumIn(x=x)) for x in range(5)))
            assert [a.y for a in answers] == [0, 2, 4, 6, 8]
            reply = await numbers.predict_reply({"x": 1}, request_id="a-1")
            assert (reply.value, reply.request_id) == (NumOut(y=2), "a-1")
        async with Words.async_client(url + "/text") as words:
            async with words.stream(Text(text="x y")) as chunks:
                assert [w.word async for w in chunks] == ["x", "y"]
            with pytest.raises(PredictError) as late:
                async for _ in words.stream({"text": "ok boom"}, request_id="a-2"):
                    pass
            assert late.value.request_id == "a-2"
        async with failing.cls.async_client(url + "/bad", retry_for=5) as bad:
            with pytest.raises(PredictError):
                await bad.predict(NumIn(x=1))
    assert failing.calls == 1


async def test_the_async_client_retries_a_refused_connection():
    Doubler = doubler(Probe())
    server = ThreadedServer(Doubler.asgi_app())
    async with Doubler.async_client(server.url, retry_for=20) as client:
        call = asyncio.ensure_future(client.predict_reply(NumIn(x=6)))
        await asyncio.sleep(0.5)
        with server:
            reply = await asyncio.wait_for(call, 20)
    assert reply.value == NumOut(y=12) and reply.attempts >= 2


# --- construction ---


def test_the_options_are_checked_where_the_client_is_made():
    Doubler = doubler(Probe())
    with pytest.raises(ConfigError, match=r"Doubler.client\(\) needs the service's URL"):
        Doubler.client()
    with pytest.raises(ConfigError, match=r"base_url='localhost:8000'\) is not an http"):
        Doubler.client("localhost:8000")
    with pytest.raises(ConfigError, match=r"timeout=0\) must be seconds > 0"):
        Doubler.client("http://x", timeout=0)
    with pytest.raises(ConfigError, match=r"retry_for=-1\) must be seconds >= 0"):
        Doubler.async_client("http://x", retry_for=-1)

    @gpu_service(name="vectors")
    class Vectors(EmbeddingServer):
        model_id = "v"

        def embed(self, texts: list[str]) -> list[list[float]]:
            return [[1.0] for _ in texts]

    with pytest.raises(ConfigError, match=r"OpenAI-compatible API.*openai SDK"):
        Vectors.client("http://x")
    with pytest.raises(ConfigError, match="is not decorated"):
        ServiceClient(ModelServer, "http://x")


# --- docs/testing.md: the client code, against `mfk serve` of the examples ---

DOC = (ROOT / "docs" / "testing.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", DOC, flags=re.S)
SNIPPETS = [c for lang, c in BLOCKS if lang == "python" and not re.match(r"# \w+\.py\n", c)]
BASH = [c for lang, c in BLOCKS if lang == "bash"]


def test_the_page_has_the_snippets_this_runs():
    assert (len(SNIPPETS), len(BASH)) == (6, 2)  # the sixth: tests/client/test_client_jobs.py
    assert BASH[0].strip() == "mfk serve examples/embeddings.py --port 8000"
    assert BASH[1].strip() == "mfk serve examples/generate.py --port 8001"


@contextlib.contextmanager
def serving(command: str, port_in_doc: int, env: dict[str, str] | None = None) -> Iterator[int]:
    port = free_port()
    args = command.strip().replace(str(port_in_doc), str(port)).split()
    with running([str(BIN / args[0]), *args[1:]], env=env):
        wait_ready(f"http://127.0.0.1:{port}", timeout=180)
        yield port


def run_snippet(code: str, port_in_doc: int, port: int) -> None:
    exec(compile(code.replace(str(port_in_doc), str(port)), "testing.md", "exec"), {})


@pytest.mark.timeout(300)
def test_the_embeddings_snippets_against_mfk_serve(capsys, monkeypatch):
    monkeypatch.setenv("EMBEDDINGS_KEY", KEY)
    with serving(BASH[0], 8000) as port:
        run_snippet(SNIPPETS[0], 8000, port)
        first = capsys.readouterr().out.splitlines()
        assert first[0] == "384"
        assert re.fullmatch(r"[0-9a-f]{32} 1", first[1]), first
        run_snippet(SNIPPETS[1], 8000, port)
        assert capsys.readouterr().out == "https://example.com/ml/embed\n"
        run_snippet(SNIPPETS[4], 8000, port)
        lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "384"
    assert re.fullmatch(
        r"422 text: String should have at least 1 character [0-9a-f]{32}", lines[1]
    ), lines


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from examples import tiny_lm

    return tiny_lm.build(tmp_path_factory.mktemp("tiny-lm") / "model")


@pytest.mark.timeout(300)
def test_the_streaming_snippets_against_mfk_serve(capsys, tiny_lm_dir):
    with serving(BASH[1], 8001, env={"TINY_LM_DIR": str(tiny_lm_dir)}) as port:
        raw = httpx.post(
            f"http://127.0.0.1:{port}/generate",
            json={"prompt": "The lighthouse", "max_new_tokens": 24},
            timeout=60,
        ).text
        run_snippet(SNIPPETS[2], 8001, port)
        text, ids = capsys.readouterr().out.removesuffix("\n").rsplit("\n", 1)
        run_snippet(SNIPPETS[3], 8001, port)
        whole = capsys.readouterr().out
    events = [line[6:] for line in raw.splitlines() if line.startswith("data: ")]
    from examples.generate import Piece

    assert text == "".join(Piece.model_validate_json(e).text for e in events)
    assert re.fullmatch(rf"[0-9a-f]{{32}} {len(events)} pieces", ids), ids
    assert whole.startswith(text)  # 32 new tokens by default: the 24 first, then more


def test_an_answer_that_is_not_the_response_model_says_so():
    @gpu_service(name="other", route="/double")
    class Other(ModelServer[NumIn, Word]):
        def predict(self, item: NumIn) -> Word:
            return Word(word="x")

    with (
        served(doubler(Probe()).asgi_app()) as url,
        Other.client(url) as client,
        pytest.raises(UpstreamError) as wrong,
    ):
        client.predict(NumIn(x=1), request_id="w-1")
    assert wrong.value.detail.startswith(f"the answer of POST {url}/double is not a Word: word:")
    assert "same Other class" in wrong.value.detail
    assert (wrong.value.request_id, wrong.value.retry_after) == ("w-1", None)
