"""The same model on LitServe, with its batching on (``max_batch_size=32`` unless
``BENCH_MAX_BATCH_SIZE`` says otherwise, its own wait).

    python -m benchmarks.apps.litserve_app --port 8000

Needs ``pip install -r benchmarks/requirements.txt``. The model code is the example's own
(``examples/embeddings.py``); LitServe runs it in its own inference worker process.
"""

# No ``from __future__ import annotations`` here: LitServe reads the annotations of
# decode_request / encode_response at run time and needs real classes, not strings.
import argparse

import litserve as ls  # type: ignore[import-untyped]

from benchmarks.apps._litserve import serve
from benchmarks.apps.embeddings_variants import MAX_BATCH_SIZE, Tuned
from examples.embeddings import EmbedIn, EmbedOut


class EmbedAPI(ls.LitAPI):  # type: ignore[misc]
    def setup(self, device: str) -> None:
        self.model = Tuned()  # the example, at BENCH_DTYPE (float32 unless set)
        self.model.load()
        self.model.warmup()

    # The annotations make LitServe validate requests and responses with the same pydantic
    # models as the other contenders.
    def decode_request(self, request: EmbedIn) -> EmbedIn:
        return request

    def predict(self, items: list[EmbedIn]) -> list[EmbedOut]:
        return self.model.predict_batch(items)

    def encode_response(self, output: EmbedOut) -> EmbedOut:
        return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    api = EmbedAPI(max_batch_size=MAX_BATCH_SIZE, api_path="/embed")
    serve(api, args.port)


if __name__ == "__main__":
    main()
