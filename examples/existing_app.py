"""An app you already run, with two services mounted under /ml: embeddings and generation.

    uvicorn examples.existing_app:app --port 8000
    curl localhost:8000/                      # the app's own route
    curl -X POST localhost:8000/ml/embed -H 'content-type: application/json' \\
         -d '{"text": "hello world"}'
    curl -N -X POST localhost:8000/ml/generate -H 'content-type: application/json' \\
         -d '{"prompt": "The lighthouse"}'
    curl localhost:8000/ml/readyz             # 200 once both models are loaded

Each router's lifespan loads its model (one after the other); FastAPI merges them with the
app's own lifespan. /ml/healthz and /ml/readyz answer for both services.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from examples.embeddings import Embedder
from examples.generate import Generator


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.greeting = "hello from the existing app"
    yield


app = FastAPI(title="An existing app", lifespan=lifespan)


@app.get("/")
async def index() -> dict[str, str]:
    return {"message": app.state.greeting}


@app.get("/items/{item_id}")
async def read_item(item_id: int) -> dict[str, int]:
    return {"item_id": item_id}


app.include_router(Embedder.router(), prefix="/ml")
app.include_router(Generator.router(), prefix="/ml")
