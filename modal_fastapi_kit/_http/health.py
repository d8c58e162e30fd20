"""``/healthz`` and ``/readyz`` for one service, or for every service mounted at one path.

Two services included under one prefix both add ``GET /ml/readyz``; the first route wins, so
a readiness that answered for its own service alone would hide the other. Instead, when the
app starts, each service registers its health routes' full paths in the app, and a probe
answers for every service registered at the path it was called on: 200 only when all of them
are ready (``/readyz``) or alive (``/healthz``). A predict route that two services share is a
configuration error, raised when the app starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.routing import NoMatchFound

from .._core.spec import RouteNames, ServiceSpec
from .._core.state import LoadState
from ..exceptions import ConfigError

__all__ = ["HealthBody", "Probed", "liveness", "readiness", "register_service", "services_at"]

_REGISTRY = "mfk_services"  # app.state: {(full path, kind): [services answering there]}
_LOCATED = "mfk_service_paths"  # app.state: {(id(service), kind): full path}


class Probed(Protocol):
    """What a probe asks a service: the backend of one router."""

    @property
    def service_name(self) -> str: ...

    @property
    def spec(self) -> ServiceSpec: ...

    @property
    def state(self) -> LoadState: ...

    @property
    def error(self) -> str | None: ...

    def restart_reason(self) -> tuple[str, str] | None:
        """``(status, why)`` when this process should be restarted, else None."""
        ...

    async def healthy(self) -> bool: ...


class ServiceHealth(BaseModel):
    status: str
    detail: str | None = None


class HealthBody(BaseModel):
    status: str
    detail: str | None = None
    services: dict[str, ServiceHealth] | None = None


async def readiness(request: Request, own: Probed) -> Response:
    """200 when every service at this path is loaded and healthy, else 503 with why."""
    services = services_at(request, own, "readyz")
    states: dict[str, ServiceHealth] = {}
    for service in services:
        states[service.service_name] = await _readiness_of(service)
    return _answer(states, ok="ready")


async def liveness(request: Request, own: Probed) -> Response:
    """200 while every service at this path can make progress; 503 when one should be
    restarted (its model is stuck, or failed to load for good)."""
    services = services_at(request, own, "healthz")
    states = {
        s.service_name: ServiceHealth(status=reason[0], detail=reason[1])
        if (reason := s.restart_reason()) is not None
        else ServiceHealth(status="ok")
        for s in services
    }
    return _answer(states, ok="ok")


async def _readiness_of(service: Probed) -> ServiceHealth:
    if await service.healthy():
        return ServiceHealth(status="ready")
    if (reason := service.restart_reason()) is not None:
        return ServiceHealth(status=reason[0], detail=reason[1])
    state = service.state
    if state is LoadState.READY:
        return ServiceHealth(status="unhealthy")
    # What failed stays in the server's log: a probe is no place for paths or credentials.
    detail = "the server's log says why" if state is LoadState.FAILED else None
    return ServiceHealth(status=state.value, detail=detail)


def _answer(states: dict[str, ServiceHealth], *, ok: str) -> Response:
    failing = [s for s in states.values() if s.status != ok]
    if len(states) == 1:
        (only,) = states.values()
        body = HealthBody(status=only.status, detail=only.detail)
    else:
        body = HealthBody(status=failing[0].status if failing else ok, services=states)
    if not failing:
        return JSONResponse(body.model_dump(exclude_none=True))
    return JSONResponse(
        body.model_dump(exclude_none=True), status_code=503, headers={"retry-after": "5"}
    )


def services_at(request: Request, own: Probed, kind: str) -> Sequence[Probed]:
    """Every service registered for the shared route ``kind`` at the path of ``own``'s."""
    located: dict[tuple[int, str], str] = getattr(request.app.state, _LOCATED, {})
    registry: dict[tuple[str, str], list[Probed]] = getattr(request.app.state, _REGISTRY, {})
    path = located.get((id(own), kind))
    return registry.get((path, kind), [own]) if path is not None else [own]


def register_service(app: Any, service: Probed, names: RouteNames) -> None:
    """Record where ``service``'s routes are in ``app``; refuse an exclusive route that
    another service answers too.

    The full paths (with every prefix) come from ``app.url_path_for(name)``. Called from the
    router's lifespan, which FastAPI hands the app the router was included in.
    """
    if not isinstance(app, Starlette):
        return
    registry: dict[tuple[str, str], list[Probed]] = _state(app, _REGISTRY)
    located: dict[tuple[int, str], str] = _state(app, _LOCATED)
    for name in names.exclusive:
        path = _path(app, name)
        owners: list[Probed] = registry.setdefault((path or name, "exclusive"), [])
        if path is not None and owners and service not in owners:
            raise ConfigError(
                f"{service.service_name} and {owners[0].service_name} both answer {path}: give "
                "each service its own route (route= in @gpu_service), or include them under "
                "different prefixes"
            )
        if service not in owners:
            owners.append(service)
    for kind, name in names.shared.items():
        path = _path(app, name)
        if path is None:  # mounted some other way: it answers for itself
            continue
        sharing = registry.setdefault((path, kind), [])
        if service not in sharing:
            sharing.append(service)
        located[(id(service), kind)] = path


def _path(app: Starlette, name: str) -> str | None:
    try:
        return str(app.url_path_for(name))
    except NoMatchFound:
        return None


def _state(app: Starlette, name: str) -> dict[Any, Any]:
    found: dict[Any, Any] | None = getattr(app.state, name, None)
    if found is None:
        found = {}
        setattr(app.state, name, found)
    return found
