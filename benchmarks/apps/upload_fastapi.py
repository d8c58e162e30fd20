"""Plain FastAPI hashing an upload in 1 MiB pieces: what Starlette alone holds per upload.

    uvicorn benchmarks.apps.upload_fastapi:app --port 8000

``POST /upload`` takes a ``multipart/form-data`` part named ``file`` (``UploadFile``: Starlette
spools it to disk past 1 MiB) or, with any other content type, the raw body, read as it
streams in (``request.stream()``).
"""

from __future__ import annotations

import hashlib

from fastapi import FastAPI, HTTPException, Request

from benchmarks.apps.upload_mfk import Digest

app = FastAPI()
PIECE = 1 << 20


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/upload")
async def upload(request: Request) -> Digest:
    digest = hashlib.sha256()
    size = 0
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        async with request.form() as form:
            part = form.get("file")
            if part is None or isinstance(part, str):
                raise HTTPException(400, "send the file as a form part named 'file'")
            while piece := await part.read(PIECE):
                digest.update(piece)
                size += len(piece)
    else:
        async for piece in request.stream():
            digest.update(piece)
            size += len(piece)
    return Digest(sha256=digest.hexdigest(), size=size)
