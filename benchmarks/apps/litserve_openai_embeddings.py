"""all-MiniLM-L6-v2 behind LitServe's ``OpenAIEmbeddingSpec`` (``POST /v1/embeddings``).

    python -m benchmarks.apps.litserve_openai_embeddings --port 8000
    python -m benchmarks.apps.litserve_openai_embeddings --port 8000 --max-batch-size 1

The contender of ``benchmarks/openai_embeddings.py``: the model code of
``examples/openai_embeddings.py`` (``examples.embeddings.MiniLM``), one inference worker on
CPU, batches of up to 64 requests collected for at most 5 ms (``batch_timeout=0.005``).

How the spec drives a ``LitAPI`` (litserve 0.2.19): its own endpoint parses the body as its
``EmbeddingRequest`` and queues it; the worker calls ``decode_request`` (here: the texts),
``predict`` (batched: one entry per request, and it must answer one entry per request),
``encode_response`` per request, which must return ``{"embeddings": [...]}`` plus, for
``usage``, ``prompt_tokens`` and ``total_tokens``; the endpoint then numbers the vectors and
applies ``encoding_format``. With ``max_batch_size > 1`` the spec refuses (400) a request
with more than one input, so lists of several inputs need ``--max-batch-size 1``.
"""

# No ``from __future__ import annotations``: LitServe inspects these signatures at run time.
import argparse
from typing import Any

import litserve as ls  # type: ignore[import-untyped]
from litserve.specs import OpenAIEmbeddingSpec  # type: ignore[import-untyped]
from litserve.specs.openai_embedding import EmbeddingRequest  # type: ignore[import-untyped]

from benchmarks.apps._litserve import serve

MAX_BATCH_SIZE = 64
BATCH_TIMEOUT_S = 0.005  # the kit's wait_ms=5


class MiniLMEmbeddingAPI(ls.LitAPI):  # type: ignore[misc]
    def setup(self, device: str) -> None:
        from examples.embeddings import MiniLM

        self.encoder = MiniLM()
        self.encoder.encode(["warm up"])

    def decode_request(self, request: EmbeddingRequest) -> list[str]:
        texts: list[str] = request.ensure_list()
        return texts

    def predict(self, inputs: Any, context: Any) -> Any:
        """Batched: ``inputs`` holds each request's texts, ``context`` each request's dict.

        All the texts go through the model at once; each request gets its vectors back, and
        its token count goes into its context for ``encode_response``.
        """
        batched = self.max_batch_size > 1
        requests: list[list[str]] = inputs if batched else [inputs]
        contexts: list[dict[str, Any]] = context if batched else [context]
        flat = [text for texts in requests for text in texts]
        vectors = self.encoder.encode(flat)
        counts = self.encoder.count_tokens(flat)
        answers: list[list[list[float]]] = []
        start = 0
        for texts, ctx in zip(requests, contexts, strict=True):
            end = start + len(texts)
            answers.append(vectors[start:end])
            ctx["tokens"] = sum(counts[start:end])
            start = end
        return answers if batched else answers[0]

    # The spec's own encode_response reads usage from ``context_kwargs``, which LitServe's
    # loops never pass (they pass ``context`` only to a method that names it), so usage
    # would always be 0: this one reports the model's token counts, as the kit does.
    def encode_response(self, output: list[list[float]], context: dict[str, Any]) -> dict[str, Any]:
        tokens = int(context.get("tokens", 0))
        return {"embeddings": output, "prompt_tokens": tokens, "total_tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch-size", type=int, default=MAX_BATCH_SIZE)
    parser.add_argument("--batch-timeout", type=float, default=BATCH_TIMEOUT_S, help="seconds")
    args = parser.parse_args()
    api = MiniLMEmbeddingAPI(
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout if args.max_batch_size > 1 else 0.0,
        spec=OpenAIEmbeddingSpec(),
    )
    serve(api, args.port)


if __name__ == "__main__":
    main()
