"""Router + backend + app: the one place a service is put together, wherever it is served.

``ModelServer.router()`` / ``asgi_app()``, ``mfk serve``, the split topology's web function
and the colocated container all come through here.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from ._backends import Backend, BackendName, create_backend
from ._core.spec import ServiceSpec
from ._http.origin_lock import apply_origin_lock
from ._http.router import ServiceRouter, build_router

__all__ = ["service_app", "service_router"]


def service_router(
    spec: ServiceSpec, backend: Backend | BackendName = "local", **backend_options: Any
) -> ServiceRouter:
    """The service's router on ``backend``: a ``Backend``, or the name of one to build
    (``"local"``: this process; ``"modal"``: the deployed GPU class) with its options."""
    if isinstance(backend, str):
        backend = create_backend(spec, backend, **backend_options)
    return build_router(spec, backend)


def service_app(spec: ServiceSpec, router: ServiceRouter) -> FastAPI:
    """A FastAPI app serving ``router`` at the root, with ``/docs`` and the origin lock."""
    app = FastAPI(title=spec.config.name, summary=(spec.server_cls.__doc__ or "").strip())
    app.include_router(router)
    apply_origin_lock(app, spec.config)
    return app
