"""LitServe around a model that does no work (``max_batch_size=32``, ``batch_timeout=0.005``).

python -m benchmarks.apps.noop_litserve --port 8000
"""

# No ``from __future__ import annotations``: LitServe reads these annotations at run time.
import argparse

import litserve as ls  # type: ignore[import-untyped]

from benchmarks.apps._litserve import serve
from benchmarks.apps.noop import ANSWER, EmbedIn, EmbedOut


class NoopAPI(ls.LitAPI):  # type: ignore[misc]
    def setup(self, device: str) -> None:
        pass

    def decode_request(self, request: EmbedIn) -> EmbedIn:
        return request

    def predict(self, items: list[EmbedIn]) -> list[EmbedOut]:
        return [ANSWER] * len(items)

    def encode_response(self, output: EmbedOut) -> EmbedOut:
        return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    api = NoopAPI(max_batch_size=32, batch_timeout=0.005, api_path="/embed")
    serve(api, args.port)


if __name__ == "__main__":
    main()
