"""examples/embeddings.py's class on a Modal Server (topology="server"), for the tests: the
example itself keeps its topology."""

from __future__ import annotations

from examples.embeddings import EmbedIn, EmbedOut, MiniLM
from modal_fastapi_kit import ModelServer, gpu_service
from tests._servers import free_port


@gpu_service(
    name="embeddings-server",
    gpu="A10",
    route="/embed",
    max_batch_size=32,
    wait_ms=5,
    topology="server",
    port=free_port(),
)
class ServerEmbedder(ModelServer[EmbedIn, EmbedOut]):
    """all-MiniLM-L6-v2 sentence embeddings, as examples/embeddings.py, on a Modal Server."""

    def load(self) -> None:
        self.encoder = MiniLM()

    def predict_batch(self, items: list[EmbedIn]) -> list[EmbedOut]:
        vectors = self.encoder.encode([item.text for item in items])
        return [EmbedOut(embedding=vector) for vector in vectors]
