"""A service that reads each upload in 1 MiB pieces and answers its sha256 and size.

    mfk serve benchmarks/apps/upload_mfk.py --port 8000
    curl -F file=@big.bin localhost:8000/upload              # a form part
    curl --data-binary @big.bin localhost:8000/upload        # the raw body

``predict`` reads the file through ``File.chunks()``, so it never holds the whole file; what
the process holds while an upload arrives is the HTTP side's doing (``benchmarks/uploads.py``
measures it).
"""

from __future__ import annotations

import hashlib

from pydantic import BaseModel

from modal_fastapi_kit import File, ModelServer, gpu_service


class UploadIn(BaseModel):
    file: File


class Digest(BaseModel):
    sha256: str
    size: int


@gpu_service(route="/upload")
class Hasher(ModelServer[UploadIn, Digest]):
    def predict(self, item: UploadIn) -> Digest:
        digest = hashlib.sha256()
        for piece in item.file.chunks():
            digest.update(piece)
        return Digest(sha256=digest.hexdigest(), size=item.file.size)
