"""``mfk serve --reload``: the app factory that uvicorn's reloader imports in each fresh
process, from the ``FILE.py[:Class]`` that ``mfk serve`` put in the environment."""

from __future__ import annotations

import os

from fastapi import FastAPI

from .._assembly import service_app, service_router
from .._core.spec import service_spec
from ._loading import load_service

__all__ = ["TARGET_ENV", "app"]

TARGET_ENV = "MFK_SERVE_TARGET"


def app() -> FastAPI:
    """The service's app, as ``mfk serve`` builds it, for the file named in ``TARGET_ENV``."""
    spec = service_spec(load_service(os.environ[TARGET_ENV]))
    return service_app(spec, service_router(spec))
