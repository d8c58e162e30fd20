"""The OpenAI-compatible examples as Modal runs them, offline: the GPU class in a container run
by Modal's own lifecycle code, behind the web tier's router on the Modal backend (split), or
serving the routes itself (colocated); answers checked against the ``openai`` SDK's types."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from modal_fastapi_kit import gpu_service
from modal_fastapi_kit._modal.build import deployment
from modal_fastapi_kit.cli._check import describe
from modal_fastapi_kit.openai import ChatRequest, ChatServer

from ..modal_container import ModalContainer

pytestmark = pytest.mark.timeout(300)


@gpu_service(name="colocated-echo", topology="colocated", gpu="L4")
class ColocatedEcho(ChatServer):
    model_id = "echo"

    def generate(self, request: ChatRequest) -> Iterator[str]:
        for word in request.messages[-1].content.split():
            yield word + " "


async def post(app: object, path: str, body: dict[str, object]) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://modal") as client:
        return await client.post(path, json=body)


def rows(built: object) -> dict[str, str]:
    return {key: value for _, section in describe(built) for key, value in section}  # type: ignore[arg-type]


def test_the_embeddings_example_deploys_split_with_a_batched_gpu_method():
    from examples.openai_embeddings import MiniLMEmbeddings

    described = rows(deployment(MiniLMEmbeddings))
    assert described["batching"] == "@modal.batched: up to 64, wait 5 ms"
    assert described["routes"].startswith("POST /v1/embeddings, GET /v1/models")


@pytest.mark.e2e  # runs the example model (torch)
def test_split_embeddings_answer_openai_responses_from_the_container():
    from examples.openai_embeddings import MiniLMEmbeddings

    with ModalContainer(MiniLMEmbeddings) as container:
        app = MiniLMEmbeddings.asgi_app(backend="modal", handle=container.handle())
        with container.serving(app):
            texts = ["A man is eating food.", "Modal runs GPU containers on demand."]
            body = {"model": "all-MiniLM-L6-v2", "input": texts, "encoding_format": "float"}
            response = container.run(post(app, "/v1/embeddings", body))
        local = container.instance.embed(texts)
        tokens = sum(container.instance.count_tokens(texts))
    assert response.status_code == 200, response.text
    parsed = CreateEmbeddingResponse.model_validate(response.json())
    assert [d.index for d in parsed.data] == [0, 1]
    for got, want in zip(parsed.data, local, strict=True):
        assert max(abs(a - b) for a, b in zip(got.embedding, want, strict=True)) < 1e-6
    assert parsed.usage.prompt_tokens == tokens == 19  # [CLS] ... [SEP], each


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from examples import tiny_lm

    return tiny_lm.build(tmp_path_factory.mktemp("tiny-lm") / "model")


@pytest.mark.e2e  # runs the example model (torch)
def test_split_chat_streams_openai_chunks_through_the_web_tier(model_dir, monkeypatch):
    monkeypatch.setenv("TINY_LM_DIR", str(model_dir))
    from examples.chat import TinyChat

    assert rows(deployment(TinyChat))["class"].endswith("(methods: mfk_stream)")
    question = [{"role": "user", "content": "Where did the ship sail?"}]
    with ModalContainer(TinyChat) as container:
        app = TinyChat.asgi_app(backend="modal", handle=container.handle())
        with container.serving(app):
            whole = container.run(
                post(app, "/v1/chat/completions", {"model": "tiny-chat", "messages": question})
            )
            streamed = container.run(
                post(
                    app,
                    "/v1/chat/completions",
                    {"model": "tiny-chat", "messages": question, "stream": True},
                )
            )
    answer = ChatCompletion.model_validate(whole.json())
    events = streamed.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [ChatCompletionChunk.model_validate(json.loads(e[6:])) for e in events[:-2]]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == answer.choices[0].message.content
    assert text.startswith("The ship sailed west")
    assert answer.usage is not None and answer.usage.prompt_tokens == 14


def test_colocated_chat_serves_the_routes_from_the_gpu_container():
    with ModalContainer(ColocatedEcho) as container, container.web_app() as app:
        response = container.run(
            post(
                app,
                "/v1/chat/completions",
                {"model": "echo", "messages": [{"role": "user", "content": "hi there"}]},
            )
        )
        models = container.run(_get(app, "/v1/models"))
    assert ChatCompletion.model_validate(response.json()).choices[0].message.content == (
        "hi there "
    )
    assert [m["id"] for m in models.json()["data"]] == ["echo"]


async def _get(app: object, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://modal") as client:
        return await client.get(path)
