"""LitServe hashing an upload in 1 MiB pieces, the way LitServe takes a form.

    python -m benchmarks.apps.upload_litserve --port 8000

LitServe 0.2.19 parses a ``multipart/form-data`` body with Starlette's parser, which it sets
to keep every file in memory (``MultiPartParser.spool_max_size = sys.maxsize``, so the form
can be pickled), and sends the parsed form through its request queue to the inference worker,
whose ``decode_request`` gets it. Any other body is parsed as JSON: there is no raw-body path.
"""

# No ``from __future__ import annotations``: LitServe reads these annotations at run time.
import argparse
import hashlib
from typing import Any

import litserve as ls  # type: ignore[import-untyped]

from benchmarks.apps._litserve import serve

PIECE = 1 << 20


class HashAPI(ls.LitAPI):  # type: ignore[misc]
    def setup(self, device: str) -> None:
        pass

    # No annotation on ``request``: LitServe then hands over the parsed form (or JSON).
    def decode_request(self, request) -> tuple[str, int]:  # type: ignore[no-untyped-def]
        upload = request["file"]
        digest = hashlib.sha256()
        size = 0
        upload.file.seek(0)
        while piece := upload.file.read(PIECE):
            digest.update(piece)
            size += len(piece)
        return digest.hexdigest(), size

    def predict(self, item: tuple[str, int]) -> tuple[str, int]:
        return item

    def encode_response(self, output: tuple[str, int]) -> dict[str, Any]:
        return {"sha256": output[0], "size": output[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    serve(HashAPI(api_path="/upload"), args.port)


if __name__ == "__main__":
    main()
