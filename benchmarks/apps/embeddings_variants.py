"""examples/embeddings.py with observability and keys turned off or on, for measuring what they
cost side by side (``python -m benchmarks.serving --contenders mfk-bare,mfk-guarded``).

    MFK_API_KEYS=<key> BENCH_AUTHORIZATION="Bearer <key>" python -m benchmarks.serving ...

wrk sends ``BENCH_AUTHORIZATION`` to every contender; those without keys ignore it.
"""

from __future__ import annotations

from examples.embeddings import Embedder
from modal_fastapi_kit import gpu_service

OPTIONS = {"name": "embeddings-api", "route": "/embed", "max_batch_size": 32, "wait_ms": 5}


@gpu_service(**OPTIONS, metrics=False)
class Bare(Embedder):
    """No metrics, no keys."""


@gpu_service(**OPTIONS, auth="api-key")
class Guarded(Embedder):
    """Metrics on (the default) and every request's API key checked."""
