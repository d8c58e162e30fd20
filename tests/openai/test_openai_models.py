"""``GET /v1/models/{id}`` over real HTTP: an id not served is OpenAI's 404 whatever its
characters (line breaks and other control characters included), as the ``openai`` SDK and
schemathesis' response-schema check see it, at the root and under a prefix."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import httpx
import openai
import pytest
from fastapi import FastAPI

from modal_fastapi_kit import gpu_service
from modal_fastapi_kit.openai import ChatRequest, ChatServer, EmbeddingServer

from .._servers import ThreadedServer, wait_ready

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

# What Starlette's own path parameter stops at, and a few more that a fuzzer sends.
ODD_IDS = ["a\nb", "\n", "a\r\nb", "a\x00b", "\t", "a\x1fb", "a\u2028b", "a/b", "", " "]


@gpu_service(name="vectors")
class Vectors(EmbeddingServer):
    model_id = "vectors-1"

    def embed(self, texts: list[str]) -> list[list[float]]:
        return [[float(len(text))] for text in texts]


@gpu_service(name="talk")
class Talk(ChatServer):
    model_id = "talk-1"

    def generate(self, request: ChatRequest) -> Iterator[str]:
        yield "hi"


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    app = FastAPI()
    app.include_router(Vectors.router())
    app.include_router(Talk.router(), prefix="/llm")
    with ThreadedServer(app) as server:
        wait_ready(server.url, "/llm/v1/models")
        yield server.url


def model_not_found(response: httpx.Response, requested: str) -> None:
    assert response.status_code == 404, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"]
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "model"
    assert error["code"] == "model_not_found"
    assert repr(requested) in error["message"]


@pytest.mark.parametrize("prefix", ["", "/llm"])
@pytest.mark.parametrize("requested", ODD_IDS)
def test_an_id_not_served_is_openais_404_whatever_its_characters(base, prefix, requested):
    path = f"{prefix}/v1/models/" + quote(requested, safe="/")
    model_not_found(httpx.get(base + path, timeout=10), requested)


def test_a_served_id_is_found_at_its_prefix(base):
    assert httpx.get(f"{base}/v1/models/vectors-1").json()["id"] == "vectors-1"
    assert httpx.get(f"{base}/llm/v1/models/talk-1").json()["id"] == "talk-1"


def test_the_sdk_raises_not_found_for_an_id_with_a_line_break(base):
    with openai.OpenAI(base_url=f"{base}/llm/v1", api_key="x", max_retries=0) as client:
        with pytest.raises(openai.NotFoundError) as raised:
            client.models.retrieve("a\nb")
        assert raised.value.code == "model_not_found"
        assert client.models.retrieve("talk-1").id == "talk-1"


def test_schemathesis_finds_the_answers_conform_to_the_schema(base):
    schemathesis = pytest.importorskip("schemathesis")
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operation = schema["/v1/models/{model}"]["GET"]
    for requested in ODD_IDS:
        case = operation.Case(path_parameters={"model": requested})
        response = case.call_and_validate(base_url=base)
        assert response.status_code == 404
