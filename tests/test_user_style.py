"""A user's test file for examples/embeddings.py, written from docs/testing.md: a fixture, a
fake model (no weights), the typed client on the test client. Each test takes well under a
second."""

from __future__ import annotations

import asyncio

import pytest

from examples.embeddings import Embedder, EmbedIn, EmbedOut
from modal_fastapi_kit.exceptions import InputError, PredictError
from modal_fastapi_kit.testing import aserve, fake, serve

pytestmark = pytest.mark.timeout(10)


class FakeEncoder:
    """Stands in for MiniLM: a vector from the text's length, no weights to load."""

    def encode(self, texts: list[str]) -> list[list[float]]:
        return [[float(len(text)), 1.0] for text in texts]


def fake_load(self: Embedder) -> None:
    self.encoder = FakeEncoder()


@pytest.fixture
def fake_embedder() -> type[Embedder]:
    return fake(Embedder, load=fake_load)


@pytest.fixture
def http(fake_embedder):
    with serve(fake_embedder) as http:
        yield http


@pytest.fixture
def embedder(http):
    with Embedder.client(http_client=http) as client:
        yield client


def test_each_text_gets_a_vector(embedder):
    answer = embedder.predict(EmbedIn(text="abc"))
    assert answer == EmbedOut(embedding=[3.0, 1.0])


def test_the_reply_carries_the_request_id(embedder):
    reply = embedder.predict_reply({"text": "hello"}, request_id="user-1")
    assert (reply.value.embedding, reply.request_id, reply.attempts) == ([5.0, 1.0], "user-1", 1)


def test_the_raw_http_contract(http):
    assert http.post("/embed", json={"text": "ab"}).json() == {"embedding": [2.0, 1.0]}
    assert http.post("/embed", json={"text": ""}).status_code == 422
    assert http.get("/readyz").json() == {"status": "ready"}


def test_an_empty_text_is_refused_before_it_is_sent(embedder):
    with pytest.raises(InputError, match="at least 1 character"):
        embedder.predict({"text": ""})


def test_the_server_refuses_it_too(embedder):
    with pytest.raises(InputError) as refused:
        embedder.predict(EmbedIn.model_construct(text=""))
    assert refused.value.status_code == 422 and refused.value.request_id


def nothing(self: Embedder) -> None:
    pass


def broken_batch(self: Embedder, items: list[EmbedIn]) -> list[EmbedOut]:
    raise RuntimeError("CUDA out of memory")


def test_a_model_failure_is_a_500_with_a_request_id():
    broken = fake(Embedder, load=nothing, warmup=nothing, predict_batch=broken_batch)
    with (
        serve(broken) as http,
        Embedder.client(http_client=http) as client,
        pytest.raises(PredictError) as failed,
    ):
        client.predict(EmbedIn(text="abc"), request_id="test-42")
    assert failed.value.status_code == 500
    assert failed.value.request_id == "test-42"


@fake
class CountingEmbedder(Embedder):
    def load(self) -> None:
        self.calls: list[int] = []

    def predict_batch(self, items: list[EmbedIn]) -> list[EmbedOut]:
        self.calls.append(len(items))
        return [EmbedOut(embedding=[float(len(i.text))]) for i in items]


def test_the_fake_keeps_the_config():
    assert CountingEmbedder.service_config() == Embedder.service_config()
    with serve(CountingEmbedder) as http:
        assert http.post("/embed", json={"text": "abcd"}).json() == {"embedding": [4.0]}


async def test_concurrent_requests(fake_embedder):
    async with aserve(fake_embedder) as http, Embedder.async_client(http_client=http) as client:
        texts = ["a" * n for n in range(1, 9)]
        answers = await asyncio.gather(*(client.predict(EmbedIn(text=t)) for t in texts))
    assert [a.embedding[0] for a in answers] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
