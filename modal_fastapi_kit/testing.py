"""Test a service in-process: start it, wait for its model, swap the model for a fake.

``serve(Cls)`` (sync) and ``aserve(Cls)`` (async) run the service's app with its lifespan,
wait until ``/readyz`` answers 200, and give an httpx client on it; they raise at once,
naming the service and why, when ``load()`` fails, and after ``ready_timeout`` when it does
not end. ``fake(Cls, load=...)`` is the same service (name, route, batching, models, every
option) with some hooks replaced, so a test needs no weights::

    import pytest
    from modal_fastapi_kit.testing import fake, serve

    from myapp import Embedder, EmbedIn


    class FakeEncoder:
        def encode(self, texts):
            return [[float(len(t))] for t in texts]


    def fake_load(self):
        self.encoder = FakeEncoder()


    @pytest.fixture
    def embedder():
        with serve(fake(Embedder, load=fake_load)) as http:
            with Embedder.client(http_client=http) as client:
                yield client


    def test_embeds(embedder):
        assert embedder.predict(EmbedIn(text="abc")).embedding == [3.0]

A service with ``File`` fields, or one that answers a file, is tested the same way: the
typed client sends the files as ``multipart/form-data`` and a file answer comes back as a
``File``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx
from fastapi.testclient import TestClient
from starlette.types import ASGIApp, Message

from ._assembly import service_app, service_router
from ._backends.base import Backend
from ._core.spec import (
    JOINING_HOOKS,
    LIFECYCLE_HOOKS,
    SPEC_ATTR,
    PredictHook,
    ServiceSpec,
    service_spec,
)
from ._core.state import LoadState
from ._decorator import check_predict
from ._server import ModelServer
from .exceptions import ConfigError, LoadFailed, NotReadyError, Unauthorized

__all__ = ["DEFAULT_READY_TIMEOUT", "HOOKS", "aserve", "fake", "serve"]

S = TypeVar("S", bound=type[ModelServer[Any, Any]])

HOOKS = (*LIFECYCLE_HOOKS, "predict", "predict_batch", *JOINING_HOOKS)
DEFAULT_READY_TIMEOUT = 30.0
_POLL = 0.01  # seconds between two readiness probes


def fake(server_cls: S, /, **hooks: Callable[..., Any]) -> S:
    """``server_cls`` with the hooks given replaced, served with the same config and models.

    ``fake(Embedder, load=fake_load)`` is a subclass of ``Embedder`` whose ``load`` is
    ``fake_load`` (a function taking ``self``); its name, route, batching and every other
    ``@gpu_service`` option are ``Embedder``'s. As a decorator, ``@fake`` serves a subclass
    you wrote of a decorated class the same way::

        @fake
        class FakeEmbedder(Embedder):
            def load(self) -> None:
                self.encoder = FakeEncoder()

    A replaced predict hook must stream if the original does, and the reverse: clients
    expect the same answer.
    """
    spec = _nearest_spec(server_cls)
    unknown = sorted(set(hooks) - set(HOOKS))
    if unknown:
        raise ConfigError(
            f"fake({server_cls.__name__}, {unknown[0]}=...): {unknown[0]!r} is not a hook; "
            f"replace one of {', '.join(HOOKS)}"
        )
    for name, hook in hooks.items():
        if not callable(hook):
            raise ConfigError(
                f"fake({server_cls.__name__}, {name}={hook!r}): a hook is a function taking "
                f"self, e.g. 'def {name}(self): ...'"
            )
    served: type[Any] = server_cls
    if hooks or SPEC_ATTR in vars(server_cls):
        namespace: dict[str, Any] = {
            **hooks,
            "__module__": server_cls.__module__,
            "__qualname__": server_cls.__qualname__,
            "__doc__": server_cls.__doc__,
        }
        served = type(server_cls.__name__, (server_cls,), namespace)
    predict = PredictHook.of(served)
    if predict.streaming != spec.predict.streaming:
        does = "streams" if spec.predict.streaming else "answers at once"
        fix = "a generator (yield)" if spec.predict.streaming else "return the response"
        raise ConfigError(
            f"the fake {predict.name} of {spec.name} must match the original, which {does}: "
            f"make it {fix}"
        )
    check_predict(served, spec.config)
    setattr(served, SPEC_ATTR, dataclasses.replace(spec, server_cls=served, predict=predict))
    return cast(S, served)


def _nearest_spec(server_cls: type) -> ServiceSpec:
    for klass in getattr(server_cls, "__mro__", ()):
        if isinstance(vars(klass).get(SPEC_ATTR), ServiceSpec):
            return service_spec(klass)
    raise ConfigError(
        f"fake({getattr(server_cls, '__name__', server_cls)!r}): it is not a class decorated "
        "with @gpu_service(...), nor a subclass of one; pass the service class itself"
    )


@contextlib.contextmanager
def serve(
    target: type[ModelServer[Any, Any]] | ASGIApp,
    *,
    ready_timeout: float = DEFAULT_READY_TIMEOUT,
    readyz: str = "/readyz",
    headers: Mapping[str, str] | None = None,
) -> Iterator[TestClient]:
    """Serve ``target`` in this process and yield a ``TestClient`` (an ``httpx.Client``) once
    it is ready.

    ``target``: a decorated class (served as ``Cls.asgi_app()``: its route, ``/healthz``,
    ``/readyz``, ``/metrics``), or an ASGI app that mounts services (then ``readyz`` is the
    path of their readiness route, e.g. ``"/ml/readyz"``). ``headers`` go with every request,
    the readiness probes included (a key, when ``auth_readyz=True``). On exit the app shuts
    down: in-flight work drains and ``unload()`` runs. A class with ``jobs`` keeps them in a
    temporary file, removed on exit (unless ``JobOptions.store`` or ``$MFK_JOBS_DB`` names
    one).
    """
    with tempfile.TemporaryDirectory(prefix="mfk-jobs-") as scratch:
        app, backend, label = _serving(target, scratch)
        with TestClient(app, headers=dict(headers or {})) as client:
            probe = _Readiness(label, readyz, ready_timeout, backend)
            while not probe.ready(client.get(readyz)):
                time.sleep(_POLL)
            yield client


@contextlib.asynccontextmanager
async def aserve(
    target: type[ModelServer[Any, Any]] | ASGIApp,
    *,
    ready_timeout: float = DEFAULT_READY_TIMEOUT,
    readyz: str = "/readyz",
    headers: Mapping[str, str] | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    """``serve`` for async tests: runs the app's lifespan on this event loop and yields an
    ``httpx.AsyncClient`` on it (base URL ``http://testserver``) once it is ready.

    httpx's ``ASGITransport`` hands over a response when it is complete, so a stream's chunks
    arrive together at its end; test their timing against a real server.
    """
    with tempfile.TemporaryDirectory(prefix="mfk-jobs-") as scratch:
        async with _aserving(target, scratch, ready_timeout, readyz, headers) as client:
            yield client


@contextlib.asynccontextmanager
async def _aserving(
    target: type[ModelServer[Any, Any]] | ASGIApp,
    scratch: str,
    ready_timeout: float,
    readyz: str,
    headers: Mapping[str, str] | None,
) -> AsyncIterator[httpx.AsyncClient]:
    app, backend, label = _serving(target, scratch)
    lifespan = _Lifespan(app)
    await lifespan.startup()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", headers=dict(headers or {})
        ) as client:
            probe = _Readiness(label, readyz, ready_timeout, backend)
            while True:
                if probe.ready(await client.get(readyz)):
                    break
                await asyncio.sleep(_POLL)
            yield client
    finally:
        await lifespan.shutdown()


def _serving(
    target: type[ModelServer[Any, Any]] | ASGIApp, scratch: str
) -> tuple[ASGIApp, Backend | None, str]:
    """The app to run, the backend of its service (for a class), and its name for messages;
    a service with jobs keeps them in ``scratch`` unless told where."""
    if isinstance(target, type):
        spec = service_spec(target)
        store = Path(scratch) / f"{spec.config.name}.sqlite3" if spec.config.jobs else None
        router = service_router(spec, jobs_store=store) if store else service_router(spec)
        return service_app(spec, router), router.backend, spec.name
    if not callable(target):
        raise ConfigError(
            f"serve({target!r}): pass a class decorated with @gpu_service(...) or an ASGI app"
        )
    return target, None, getattr(target, "title", None) or type(target).__name__


class _Readiness:
    """Judges the readiness probes of one start: ready, still loading, or failed for good."""

    def __init__(self, label: str, path: str, timeout: float, backend: Backend | None) -> None:
        self.label = label
        self.path = path
        self.timeout = timeout
        self.backend = backend
        self.deadline = time.monotonic() + timeout

    def ready(self, response: httpx.Response) -> bool:
        status = response.status_code
        if status == 200:
            return True
        said = f"{self.path} answered {status} {response.text.strip()[:300]}"
        if status in (401, 403):
            raise Unauthorized(
                f"{self.label}: {said}; the readiness route needs a key: pass "
                "headers={'Authorization': 'Bearer <key>'} (a key of MFK_API_KEYS)"
            )
        if status == 404:
            raise ConfigError(
                f"{self.label}: {said}; pass readyz= the path of the service's readiness "
                "route (with its mount prefix, e.g. '/ml/readyz')"
            )
        backend = self.backend
        if backend is not None and backend.state is LoadState.FAILED:
            raise LoadFailed(f"{self.label} failed to load: {backend.error}; {said}")
        if backend is None and _status_of(response) == "failed":
            raise LoadFailed(f"{self.label} failed to load ({said}); the log says why")
        if time.monotonic() >= self.deadline:
            raise NotReadyError(
                f"{self.label} was not ready within ready_timeout={self.timeout:g}s: {said}; "
                "give load() more time with ready_timeout=, or fake it: fake(Cls, load=...)"
            )
        return False


def _status_of(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    status = body.get("status") if isinstance(body, dict) else None
    return status if isinstance(status, str) else None


class _Lifespan:
    """The ASGI lifespan protocol, run by hand: ``startup()``, then ``shutdown()``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.to_app: asyncio.Queue[Message] = asyncio.Queue()
        self.from_app: asyncio.Queue[Message] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
        await self.app(scope, self.to_app.get, self.from_app.put)

    async def startup(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())
        await self._exchange("startup")

    async def shutdown(self) -> None:
        if self.task is None:
            return
        if self.task.done():
            self.task.result()  # the app's lifespan ended early: raise what it raised
            return
        await self._exchange("shutdown")
        await self.task

    async def _exchange(self, phase: str) -> None:
        """Send ``lifespan.<phase>`` and wait for the app's answer; raise what it raised."""
        assert self.task is not None
        await self.to_app.put({"type": f"lifespan.{phase}"})
        answer = asyncio.ensure_future(self.from_app.get())
        await asyncio.wait({answer, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if not answer.done():
            answer.cancel()
            self.task.result()  # the app raised: raise it here
            raise RuntimeError(f"the app's lifespan returned without answering {phase}")
        message = answer.result()
        if message["type"] == f"lifespan.{phase}.failed":
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({self.task}, timeout=5)
            error = self.task.exception() if self.task.done() else None
            if error is not None:
                raise error
            raise RuntimeError(f"the app's {phase} failed: {message.get('message', '')}")
