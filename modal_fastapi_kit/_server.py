"""``ModelServer``: the one class a user writes.

A subclass names its request and response pydantic models as type parameters
(``ModelServer[EmbedIn, EmbedOut]``) and implements ``load`` plus ``predict`` (one item) or
``predict_batch`` (a list of items, same order back). Every hook may be sync or async, and a
predict hook may be a generator (``yield``) to stream its answer. A streaming service whose
requests should join a batch that is already generating defines ``join``, ``step`` and
``leave`` instead (the joining form).
"""

from __future__ import annotations

import collections.abc
import typing
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel

from ._core.spec import service_spec
from ._file import File, FileAnswer
from ._jobs.progress import report as report_progress
from ._protocol import RequestT, ResponseT
from ._weights import WEIGHTS_PATH_ATTR
from .exceptions import ConfigError

if TYPE_CHECKING:
    import httpx
    import modal
    from fastapi import FastAPI
    from typing_extensions import Unpack

    from ._backends import BackendName
    from ._client.options import ClientArgs
    from ._config import ServiceConfig
    from ._http.router import ServiceRouter
    from .client import AsyncServiceClient, ServiceClient

__all__ = ["ModelServer", "RequestT", "ResponseT", "io_models"]


class ModelServer(Generic[RequestT, ResponseT]):
    """Base class for a served model.

    Hooks, all optional except one of ``predict`` / ``predict_batch``:

    - ``load()``: load weights; runs once per process (or Modal container) before traffic.
    - ``to_device()``: move loaded weights to the GPU; runs after ``load``. With
      ``enable_memory_snapshot=True`` on Modal, ``load`` runs before the snapshot (no GPU
      attached) and ``to_device`` after every restore.
    - ``warmup()``: run after ``to_device`` and before the server reports ready.
    - ``predict(item) -> response``: one request. Raise ``InputError`` for input the model
      cannot handle (the client gets a 4xx with its message).
    - ``predict_batch(items) -> responses``: a batch, answered in the same order; put an
      exception in an item's slot to fail that item alone.
    - As generators (``yield``), sync or async, they stream: ``predict`` yields the chunks of
      one answer (each a response model); ``predict_batch`` yields per step one list with, per
      item, a chunk, ``None`` (nothing this step), ``END`` (that item is done) or an exception.
      Such a batch is formed once and holds the model until its last stream ends; requests
      that arrive meanwhile wait for a batch of their own.
    - The joining form, for streams that join a running batch (continuous batching): the kit
      runs the loop and calls, one at a time, ``join(items)`` (``items`` maps a key, an int
      the kit chose, to a request: add them to the batch's state, e.g. prefill their prompts
      into a KV cache; answer ``None`` or a dict from key to a first outcome),
      ``step() -> {key: outcome}`` (one step for every item joined and not left; an outcome
      is a chunk, ``None`` or no entry for nothing, ``END`` when the item is done, or an
      exception that fails that item alone) and ``leave(keys)`` (forget these items: they
      ended, failed, or their client left; every key is left once). Between two steps the
      items that ended leave and queued ones join, up to ``max_batch_size``, so a request's
      first chunk waits for at most the step in progress, not for the others to finish. A
      ``join`` or ``step`` that raises fails the items it was called for.
    - ``health() -> bool``: ``False`` makes ``/readyz`` answer 503. Keep it cheap.
    - ``self.progress(fraction, message)`` (not a hook: call it from ``predict``): how far a
      job is, shown by its status; it raises ``JobCanceled`` once the job was canceled.
    - ``unload()``: release resources at shutdown, after in-flight work drained.

    Sync hooks run on the service's one inference thread, so the model is never called from
    two threads at once; async hooks run on the event loop (on Modal: the container's loop).
    ``join``, ``step`` and ``leave`` are all sync or all async.
    """

    request_model: ClassVar[type[BaseModel]]
    response_model: ClassVar[type[BaseModel]]

    def load(self) -> Awaitable[None] | None:
        """Load weights. Runs once, before the first request."""
        return None

    def to_device(self) -> Awaitable[None] | None:
        """Optional: move weights to the GPU (``self.model.to("cuda")``); runs after ``load``."""
        return None

    def warmup(self) -> Awaitable[None] | None:
        """Optional: exercise the model once so the first request is not slow."""
        return None

    def health(self) -> bool | Awaitable[bool]:
        """Optional: report whether the loaded model can still serve."""
        return True

    def unload(self) -> Awaitable[None] | None:
        """Optional: release resources at shutdown."""
        return None

    @property
    def weights_path(self) -> Path:
        """The directory of the weights named by ``@gpu_service(weights=...)``, for ``load()``.

        On Modal: the pinned revision's directory in the weights Volume, fetched before the
        container started. Here: a ``LocalWeights`` directory itself, or hub weights fetched
        once into ``~/.cache/modal_fastapi_kit/weights`` (``$MFK_WEIGHTS_CACHE``).
        """
        found: Path | None = vars(self).get(WEIGHTS_PATH_ATTR)
        if found is not None:
            return found
        source = service_spec(type(self)).config.weights
        if source is None:
            raise ConfigError(
                f"{type(self).__qualname__}.weights_path: the service declares no weights; add "
                "@gpu_service(weights=HuggingFaceWeights('owner/name', revision='<commit sha>')) "
                "or weights=LocalWeights('path/to/dir')"
            )
        from ._weights import local_weights_path

        path = local_weights_path(source)
        setattr(self, WEIGHTS_PATH_ATTR, path)
        return path

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report how far the job being run is: ``fraction`` from 0.0 to 1.0, ``message`` a
        short line (200 characters are kept). A job's status shows the latest report; a
        batch of jobs shares its reports. Outside a job (a plain request) it does nothing.

        It raises ``JobCanceled`` once the job (every job of the batch) was canceled: let it
        propagate, so that a sync ``predict`` stops there. Cheap enough to call often; the
        runner writes reports out at most about once a second.
        """
        report_progress(fraction, message)

    # ``predict``, ``predict_batch`` and ``join`` / ``step`` / ``leave`` are deliberately not
    # defined here: a subclass defines the form it needs, and ``@gpu_service`` checks that it
    # defines one.

    @classmethod
    def service_config(cls) -> ServiceConfig:
        """The ``ServiceConfig`` recorded by ``@gpu_service``."""
        return service_spec(cls).config

    @classmethod
    def router(cls, *, backend: BackendName = "local", **backend_options: Any) -> ServiceRouter:
        """A FastAPI ``APIRouter`` serving this model: predict route, ``/healthz``, ``/readyz``.

        ``backend="local"`` runs the model in this process with dynamic batching;
        ``backend="modal"`` calls the deployed GPU class on Modal.
        """
        from ._assembly import service_router  # the web stack, only when a router is made

        return service_router(service_spec(cls), backend, **backend_options)

    @classmethod
    def modal_app(cls) -> modal.App:
        """The Modal App serving this class; bind it at module level: ``app = X.modal_app()``.

        Built once per process (Image, GPU class, web endpoint); see ``docs/deploy.md``.
        """
        from ._modal import deployment

        return deployment(cls).app

    @classmethod
    def asgi_app(cls, *, backend: BackendName = "local", **backend_options: Any) -> FastAPI:
        """A FastAPI app with this model's router at the root, plus ``/docs``."""
        from ._assembly import service_app, service_router

        spec = service_spec(cls)
        return service_app(spec, service_router(spec, backend, **backend_options))

    @classmethod
    def client(
        cls: type[ModelServer[RequestT, ResponseT]],
        base_url: str | None = None,
        *,
        http_client: httpx.Client | None = None,
        **options: Unpack[ClientArgs],
    ) -> ServiceClient[RequestT, ResponseT]:
        """A typed HTTP client of this service at ``base_url`` (with the prefix its router is
        mounted under): ``predict(item) -> response``, or ``stream(item)`` for a streaming
        service. ``options``: ``api_key``, ``timeout``, ``retry_for`` (30 s), ``retry_unsafe``,
        ``headers``. Retries what did not run (503 after ``Retry-After``, refused
        connections) for up to ``retry_for`` seconds; see ``modal_fastapi_kit.client``.
        """
        from .client import ServiceClient

        return ServiceClient(cls, base_url, http_client=http_client, **options)

    @classmethod
    def async_client(
        cls: type[ModelServer[RequestT, ResponseT]],
        base_url: str | None = None,
        *,
        http_client: httpx.AsyncClient | None = None,
        **options: Unpack[ClientArgs],
    ) -> AsyncServiceClient[RequestT, ResponseT]:
        """``client()`` for ``asyncio``: ``await client.predict(item)``,
        ``async for chunk in client.stream(item)``."""
        from .client import AsyncServiceClient

        return AsyncServiceClient(cls, base_url, http_client=http_client, **options)


def io_models(cls: type) -> tuple[type[BaseModel], type[BaseModel]]:
    """Find the request and response models of a ModelServer subclass.

    They come from the type parameters (``ModelServer[In, Out]`` on the class or a base),
    else from the annotations of ``predict`` / ``predict_batch``. A service that answers a
    file (``ModelServer[In, File]``) has ``FileAnswer`` as its response model.
    """
    found = _models_from_parameters(cls) or _models_from_annotations(cls)
    if found is None:
        raise ConfigError(
            f"{cls.__qualname__} does not say its request and response models: subclass "
            f"ModelServer[RequestModel, ResponseModel] with two pydantic BaseModel classes, "
            f"e.g. 'class {cls.__name__}(ModelServer[EmbedIn, EmbedOut])'"
        )
    if typing.cast(Any, found[1]) is File:
        found = (found[0], FileAnswer)
    for role, model in zip(("request", "response"), found, strict=True):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise ConfigError(
                f"{cls.__qualname__}: the {role} model {model!r} is not a pydantic BaseModel "
                "subclass"
                + (" (or File, for a service that answers a file)" if role == "response" else "")
                + "; define it as 'class X(BaseModel): ...'"
            )
    return found


def _models_from_parameters(cls: type) -> tuple[type[BaseModel], type[BaseModel]] | None:
    # The nearest base in the MRO written as ModelServer[In, Out] with concrete models.
    for klass in cls.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            origin = typing.get_origin(base)
            if origin is ModelServer:
                args = typing.get_args(base)
                if len(args) == 2 and not any(isinstance(a, TypeVar) for a in args):
                    return args[0], args[1]
    return None


def _models_from_annotations(cls: type) -> tuple[type[BaseModel], type[BaseModel]] | None:
    for name, is_batch in (("predict_batch", True), ("predict", False)):
        fn = getattr(cls, name, None)
        if fn is None:
            continue
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # unresolved forward references: fall through to the error
            return None
        params = [v for k, v in hints.items() if k != "return"]
        if not params or "return" not in hints:
            return None
        request, response = params[0], _streamed_item(hints["return"])
        if is_batch:
            request, response = _list_item(request), _list_item(response)
        if request is not None and response is not None:
            return request, _model_member(response)
    return None


_STREAM_ORIGINS = (
    collections.abc.Iterator,
    collections.abc.Iterable,
    collections.abc.Generator,
    collections.abc.AsyncIterator,
    collections.abc.AsyncIterable,
    collections.abc.AsyncGenerator,
)


def _streamed_item(annotation: Any) -> Any:
    """``Iterator[X]`` (and the other generator types) -> ``X``; anything else unchanged."""
    if typing.get_origin(annotation) in _STREAM_ORIGINS:
        args = typing.get_args(annotation)
        return args[0] if args else None
    return annotation


def _list_item(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (list, typing.List):  # noqa: UP006
        args = typing.get_args(annotation)
        return args[0] if args else None
    return None


def _model_member(annotation: Any) -> Any:
    """``Out | None`` (a batched stream's slot) -> ``Out``: the one BaseModel in a union."""
    members = [
        a
        for a in typing.get_args(annotation)
        if isinstance(a, type) and (issubclass(a, BaseModel) or a is File)
    ]
    return members[0] if len(members) == 1 else annotation
