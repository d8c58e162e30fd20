"""The streaming example with batching off: each request steps the model on its own.

    mfk serve benchmarks/apps/generate_unbatched.py:GeneratorUnbatched --port 8000

Same model, route and code as ``benchmarks/apps/generate_static.py`` (the generator form of
``examples/generate.py``); only ``max_batch_size=1``, so the inherited ``predict_batch``
always runs on a list of one and concurrent streams take turns with the model instead of
sharing its steps. ``benchmarks/streaming.py`` compares them.
"""

from __future__ import annotations

from benchmarks.apps.generate_static import GeneratorStatic
from modal_fastapi_kit import gpu_service


@gpu_service(
    name="generate-unbatched", route="/generate", max_batch_size=1, max_concurrent_inputs=64
)
class GeneratorUnbatched(GeneratorStatic):
    """``GeneratorStatic``, one request per model step."""
