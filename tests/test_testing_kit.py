"""modal_fastapi_kit.testing: serve / aserve wait for the model, fake keeps the config, files
go through them as through a server, and every test block of docs/testing.md passes as a
pytest file of its own."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Annotated, Any

import pytest
from fastapi import FastAPI
from pydantic import BaseModel

from modal_fastapi_kit import END, File, FileLimits, InputError, ModelServer, gpu_service
from modal_fastapi_kit._core.spec import service_spec
from modal_fastapi_kit.exceptions import (
    ConfigError,
    ErrorCode,
    LoadFailed,
    NotReadyError,
    Unauthorized,
)
from modal_fastapi_kit.testing import aserve, fake, serve

from ._servers import ROOT
from ._toys import NumIn, NumOut, Probe, doubler

pytestmark = pytest.mark.timeout(60)

KEY = "k" * 24


def timed_loader(seconds: float, events: list[str], **options: object) -> type[ModelServer]:
    """A service whose load takes ``seconds`` and which records its lifecycle in ``events``."""

    @gpu_service(name="timed", route="/double", **options)
    class Timed(ModelServer[NumIn, NumOut]):
        def load(self) -> None:
            events.append("load")
            time.sleep(seconds)
            events.append("loaded")

        def predict(self, item: NumIn) -> NumOut:
            return NumOut(y=2 * item.x)

        def unload(self) -> None:
            events.append("unload")

    return Timed


@gpu_service(name="broken", route="/double")
class Broken(ModelServer[NumIn, NumOut]):
    def load(self) -> None:
        raise RuntimeError("no weights at /models/x.bin")

    def predict(self, item: NumIn) -> NumOut:
        return NumOut(y=item.x)


class Prompt(BaseModel):
    text: str


class Word(BaseModel):
    word: str


@gpu_service(name="words", route="/words")
class Words(ModelServer[Prompt, Word]):
    def predict(self, item: Prompt) -> Iterator[Word]:
        if not item.text.strip():
            raise InputError("the prompt is blank")
        for word in item.text.split():
            yield Word(word=word)


def test_serve_waits_for_load_and_shuts_down_on_exit():
    events: list[str] = []
    with serve(timed_loader(0.3, events)) as http:
        assert events == ["load", "loaded"]
        first = http.post("/double", json={"x": 4})
        assert (first.status_code, first.json()) == (200, {"y": 8})
    assert events == ["load", "loaded", "unload"]


async def test_aserve_runs_the_lifespan_itself_and_waits():
    events: list[str] = []
    async with aserve(timed_loader(0.3, events)) as http:
        assert events == ["load", "loaded"]
        assert str(http.base_url) == "http://testserver"
        first = await http.post("/double", json={"x": 5})
        assert (first.status_code, first.json()) == (200, {"y": 10})
        assert (await http.get("/readyz")).json() == {"status": "ready"}
    assert events[-1] == "unload"


def test_a_failed_load_raises_at_once_with_the_service_and_the_exception():
    started = time.monotonic()
    with pytest.raises(LoadFailed) as failed, serve(Broken, ready_timeout=30):
        pass
    assert time.monotonic() - started < 5
    message = str(failed.value)
    assert message.startswith(
        "Broken failed to load: Broken.load() raised RuntimeError: no weights at /models/x.bin"
    )
    assert '/readyz answered 503 {"status":"failed"' in message


async def test_aserve_raises_a_failed_load_too():
    failed = r"Broken failed to load: Broken.load\(\) raised RuntimeError"
    with pytest.raises(LoadFailed, match=failed):
        async with aserve(Broken):
            pass


def test_a_slow_load_times_out_naming_the_service_and_the_last_answer():
    with pytest.raises(NotReadyError) as late, serve(timed_loader(1.0, []), ready_timeout=0.2):
        pass
    message = str(late.value)
    assert message.startswith("Timed was not ready within ready_timeout=0.2s: /readyz answered")
    assert '503 {"status":"loading"}' in message
    assert "ready_timeout=" in message and "fake(Cls, load=...)" in message


def test_fake_keeps_the_config_and_models_and_replaces_only_the_hooks_given():
    probe = Probe()
    real = doubler(probe, max_batch_size=8, wait_ms=50)
    calls: list[str] = []

    def fake_load(self: ModelServer) -> None:
        calls.append("fake load")

    def fake_batch(self: ModelServer, items: list[NumIn]) -> list[NumOut]:
        calls.append(f"batch of {len(items)}")
        return [NumOut(y=-item.x) for item in items]

    fast = fake(real, load=fake_load, predict_batch=fake_batch)
    assert issubclass(fast, real) and fast.__name__ == real.__name__
    assert fast.service_config() is real.service_config()
    assert (fast.request_model, fast.response_model) == (NumIn, NumOut)
    assert service_spec(fast).predict.batch
    assert service_spec(real).server_cls is real  # the original is untouched

    async def burst() -> list[int]:
        import asyncio

        async with aserve(fast) as http:
            answers = await asyncio.gather(*(http.post("/double", json={"x": x}) for x in range(4)))
        return [a.json()["y"] for a in answers]

    import asyncio

    assert asyncio.run(burst()) == [0, -1, -2, -3]
    assert calls == ["fake load", "batch of 4"]  # batched as the real one: wait_ms=50
    assert probe.batches == []  # the real predict_batch never ran


def test_fake_as_a_decorator_serves_the_subclass_with_the_base_config():
    real = doubler(Probe())

    @fake
    class Halver(real):  # type: ignore[misc, valid-type]
        def predict_batch(self, items: list[NumIn]) -> list[NumOut]:
            return [NumOut(y=item.x // 2) for item in items]

    assert Halver.service_config() is real.service_config()
    with serve(Halver) as http:
        assert http.post("/double", json={"x": 9}).json() == {"y": 4}


def test_fake_refuses_what_would_change_the_service():
    real = doubler(Probe())
    with pytest.raises(ConfigError, match=r"'lod' is not a hook; replace one of load, "):
        fake(real, lod=lambda self: None)
    with pytest.raises(ConfigError, match=r"a hook is a function taking self"):
        fake(real, load=3)  # type: ignore[arg-type]

    def streamed(self: ModelServer, items: list[NumIn]) -> Iterator[list[NumOut]]:
        yield [NumOut(y=0) for _ in items]

    with pytest.raises(ConfigError, match=r"must match the original, which answers at once"):
        fake(real, predict_batch=streamed)
    with pytest.raises(ConfigError, match=r"which streams: make it a generator"):
        fake(Words, predict=lambda self, item: Word(word="x"))

    class Plain(ModelServer[NumIn, NumOut]):
        def predict(self, item: NumIn) -> NumOut:
            return NumOut(y=0)

    with pytest.raises(ConfigError, match=r"not a class decorated with @gpu_service"):
        fake(Plain)


def test_serve_an_app_that_mounts_the_service_under_a_prefix():
    app = FastAPI()
    app.include_router(doubler(Probe()).router(), prefix="/ml")
    with serve(app, readyz="/ml/readyz") as http:
        assert http.post("/ml/double", json={"x": 1}).json() == {"y": 2}
    with pytest.raises(ConfigError, match=r"/readyz answered 404 .*pass readyz="), serve(app):
        pass


def test_a_readiness_route_behind_keys_needs_the_key(monkeypatch):
    monkeypatch.setenv("MFK_API_KEYS", KEY)
    guarded = timed_loader(0, [], auth="api-key", auth_readyz=True)
    with pytest.raises(Unauthorized, match=r"answered 401 .*pass headers="), serve(guarded):
        pass
    with serve(guarded, headers={"Authorization": f"Bearer {KEY}"}) as http:
        assert http.post("/double", json={"x": 3}).json() == {"y": 6}


async def test_aserve_with_the_typed_client_streams():
    async with aserve(Words) as http, Words.async_client(http_client=http) as client:
        async with client.stream(Prompt(text="one two three")) as words:
            got = [w async for w in words]
        assert got == [Word(word="one"), Word(word="two"), Word(word="three")]
        with pytest.raises(InputError, match="the prompt is blank") as blank:
            async with client.stream({"text": "  "}):
                pass
        assert blank.value.request_id is not None


def test_serve_refuses_what_is_neither_a_service_nor_an_app():
    with pytest.raises(ConfigError, match="is not decorated"), serve(NumIn):  # type: ignore[arg-type]
        pass
    with pytest.raises(ConfigError, match="pass a class decorated"), serve(3):  # type: ignore[arg-type]
        pass


def test_serve_can_be_used_from_two_threads_of_one_test():
    """A TestClient is an httpx.Client: requests from several threads reach one service."""
    gate = threading.Barrier(4, timeout=10)
    real = doubler(Probe(), max_batch_size=4, wait_ms=20)
    with serve(real) as http:
        results: list[int] = []

        def call(x: int) -> None:
            gate.wait()
            results.append(http.post("/double", json={"x": x}).json()["y"])

        threads = [threading.Thread(target=call, args=(x,)) for x in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
    assert sorted(results) == [0, 2, 4, 6]


# --- docs/testing.md: every test file block runs with pytest, in a fresh process ---

DOC = (ROOT / "docs" / "testing.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", DOC, flags=re.S)
FILES = {
    m.group(1): code
    for lang, code in BLOCKS
    if lang == "python" and (m := re.match(r"# (\w+\.py)\n", code))
}


def test_the_page_has_the_test_files_this_runs():
    assert list(FILES) == [
        "conftest.py",
        "test_embeddings.py",
        "test_counting.py",
        "test_embeddings_async.py",
        "test_embeddings_real.py",
    ]


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_the_test_files_of_the_page_pass(tmp_path):
    for name, code in FILES.items():
        (tmp_path / name).write_text(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error",
         "-o", "asyncio_default_fixture_loop_scope=function",
         "--timeout", "240", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\b7 passed\b", done.stdout), done.stdout


async def test_aserve_raises_what_the_app_raises_at_startup():
    app = FastAPI()
    app.include_router(doubler(Probe()).router(), prefix="/ml")
    app.include_router(timed_loader(0, []).router(), prefix="/ml")  # the same POST /ml/double
    with pytest.raises(ConfigError, match=r"both answer /ml/double"):
        async with aserve(app, readyz="/ml/readyz"):
            pass


# --- files: a File input goes as multipart, a file answer comes back as a File ---


class Photo(BaseModel):
    image: Annotated[File, FileLimits(content_types=("image/*",), max_bytes=4096)]
    caption: str


class Piece(BaseModel):
    size: int
    caption: str


@gpu_service(name="flip", route="/flip")
class Flip(ModelServer[Photo, File]):
    def predict(self, item: Photo) -> File:
        data = item.image.read()[::-1]
        return File(data, content_type=item.image.content_type, filename=f"{item.caption}.png")


@gpu_service(name="pieces", route="/pieces")
class Pieces(ModelServer[Photo, Piece]):
    def predict(self, item: Photo) -> Iterator[Piece]:
        for piece in item.image.chunks(100):
            yield Piece(size=len(piece), caption=item.caption)


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(250))


def photo(data: bytes = PNG, content_type: str = "image/png") -> Photo:
    return Photo(image=File(data, content_type=content_type, filename="in.png"), caption="é x")


def test_serve_a_file_service_through_the_typed_client():
    with serve(Flip) as http, Flip.client(http_client=http) as client:
        flipped = client.predict(photo())
        assert type(flipped) is File
        assert (flipped.read(), flipped.content_type, flipped.filename) == (
            PNG[::-1],
            "image/png",
            "é x.png",
        )
        with pytest.raises(InputError) as big:  # the service's own 413, by its code
            client.predict(
                Photo.model_construct(
                    image=File(b"x" * 5000, content_type="image/png"), caption="c"
                )
            )
        assert (big.value.code, big.value.status_code) == (ErrorCode.FILE_TOO_LARGE, 413)
        assert big.value.request_id is not None


async def test_aserve_a_file_service_and_a_stream_with_a_file_input():
    async with aserve(Flip) as http, Flip.async_client(http_client=http) as client:
        reply = await client.predict_reply(photo(), request_id="r-file")
        assert (reply.value.read(), reply.request_id) == (PNG[::-1], "r-file")
    async with aserve(Pieces) as http, Pieces.async_client(http_client=http) as client:
        async with client.stream(photo()) as pieces:
            got = [p async for p in pieces]
        assert got == [Piece(size=n, caption="é x") for n in (100, 100, 58)]


def test_fake_a_file_service():
    def fake_predict(self: Any, item: Photo) -> File:
        return File(b"fake " + item.caption.encode(), content_type="text/plain")

    faked = fake(Flip, predict=fake_predict)
    assert service_spec(faked).answers_file
    with serve(faked) as http, faked.client(http_client=http) as client:
        got = client.predict({"image": File(PNG, content_type="image/png"), "caption": "c"})
        assert (got.read(), got.content_type, got.filename) == (b"fake c", "text/plain", None)


def test_fake_replaces_the_hooks_of_a_service_whose_streams_join():
    from .core.test_joining import Four

    def step(self: Any) -> dict[int, Any]:
        """Each item's one chunk is -x, then it ends."""
        answers: dict[int, Any] = {}
        for key in list(self.left):
            answers[key] = END if self.sent[key] else NumOut(y=-self.wanted[key])
            self.sent[key] = 1
        return answers

    faked = fake(Four, step=step)
    assert service_spec(faked).predict.joining
    with serve(faked) as client:
        answer = client.post("/predict", json={"x": 3}, headers={"accept": "application/x-ndjson"})
    assert answer.status_code == 200
    assert [line for line in answer.text.splitlines() if line] == ['{"y":-3}']
