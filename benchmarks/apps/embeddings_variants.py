"""examples/embeddings.py with observability and keys turned off or on, and tuned for a GPU,
for measuring side by side (``python -m benchmarks.serving --contenders ...``).

    MFK_API_KEYS=<key> BENCH_AUTHORIZATION="Bearer <key>" python -m benchmarks.serving \\
        --contenders mfk-bare,mfk-guarded
    BENCH_DTYPE=float16 BENCH_MAX_BATCH_SIZE=256 python -m benchmarks.serving \\
        --contenders mfk-tuned,litserve          # what benchmarks/gpu.sh runs

wrk sends ``BENCH_AUTHORIZATION`` to every contender; those without keys ignore it.
``BENCH_DTYPE`` and ``BENCH_MAX_BATCH_SIZE`` also set the LitServe contender and the ceiling.
"""

from __future__ import annotations

import os

from examples.embeddings import Embedder, MiniLM
from modal_fastapi_kit import gpu_service

OPTIONS = {"name": "embeddings-api", "route": "/embed", "max_batch_size": 32, "wait_ms": 5}
DTYPE = os.environ.get("BENCH_DTYPE", "float32")
MAX_BATCH_SIZE = int(os.environ.get("BENCH_MAX_BATCH_SIZE", "32"))


@gpu_service(**OPTIONS, metrics=False)
class Bare(Embedder):
    """No metrics, no keys."""


@gpu_service(**OPTIONS, auth="api-key")
class Guarded(Embedder):
    """Metrics on (the default) and every request's API key checked."""


@gpu_service(**{**OPTIONS, "max_batch_size": MAX_BATCH_SIZE, "max_queue_size": 4096})
class Tuned(Embedder):
    """The example at ``BENCH_DTYPE`` with batches of up to ``BENCH_MAX_BATCH_SIZE``."""

    def load(self) -> None:
        self.encoder = MiniLM(dtype=DTYPE)
