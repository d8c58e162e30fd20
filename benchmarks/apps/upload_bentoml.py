"""BentoML hashing an upload in 1 MiB pieces, the way BentoML takes a file: a ``Path``.

    bentoml serve benchmarks.apps.upload_bentoml:Hasher --port 8000

BentoML parses a ``multipart/form-data`` body with Starlette's parser and writes each file
part to a temporary file whose path the API method gets. A body that is not a form is read
as JSON (a file field may hold a URL to download): there is no raw-body path.
It runs in a venv of its own (``benchmarks/uploads.py`` says why); this project's venv does
not have bentoml.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import bentoml  # type: ignore[import-not-found]

PIECE = 1 << 20


@bentoml.service(workers=1)  # type: ignore[misc]
class Hasher:
    @bentoml.api  # type: ignore[misc]
    def upload(self, file: Path) -> dict[str, Any]:
        digest = hashlib.sha256()
        size = 0
        with file.open("rb") as reader:
            while piece := reader.read(PIECE):
                digest.update(piece)
                size += len(piece)
        return {"sha256": digest.hexdigest(), "size": size}
