"""What users write by hand: one FastAPI endpoint that calls the model once per request.

    uvicorn benchmarks.apps.plain_fastapi:app --host 127.0.0.1 --port 8000

The endpoint is a plain ``def``, as FastAPI recommends for blocking code, so FastAPI runs it
on its thread pool. The model code is the example's own (``examples/embeddings.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from examples.embeddings import Embedder, EmbedIn, EmbedOut

model = Embedder()


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    model.load()
    model.warmup()
    yield


app = FastAPI(lifespan=lifespan)


@app.post("/embed")
def embed(item: EmbedIn) -> EmbedOut:
    return model.predict_batch([item])[0]
