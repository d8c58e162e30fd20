"""``ModelServer``: the one class a user writes.

A subclass names its request and response pydantic models as type parameters
(``ModelServer[EmbedIn, EmbedOut]``) and implements ``load`` plus ``predict`` (one item) or
``predict_batch`` (a list of items, same order back). Every hook may be sync or async.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel

from ._errors import ConfigError

if TYPE_CHECKING:
    import modal
    from fastapi import FastAPI

    from ._backends import BackendName
    from ._config import ServiceConfig
    from ._router import ServiceRouter

__all__ = ["ModelServer", "RequestT", "ResponseT", "io_models"]

RequestT = TypeVar("RequestT", bound=BaseModel)
ResponseT = TypeVar("ResponseT", bound=BaseModel)

BatchFn = Callable[[list[Any]], "list[Any] | Awaitable[list[Any]]"]


class ModelServer(Generic[RequestT, ResponseT]):
    """Base class for a served model.

    Hooks, all optional except one of ``predict`` / ``predict_batch``:

    - ``load()``: load weights; runs once per process (or Modal container) before traffic.
    - ``to_device()``: move loaded weights to the GPU; runs after ``load``. With
      ``enable_memory_snapshot=True`` on Modal, ``load`` runs before the snapshot (no GPU
      attached) and ``to_device`` after every restore.
    - ``warmup()``: run after ``to_device`` and before the server reports ready.
    - ``predict(item) -> response``: one request.
    - ``predict_batch(items) -> responses``: a batch, answered in the same order.
    - ``health() -> bool``: ``False`` makes ``/readyz`` answer 503. Keep it cheap.
    - ``unload()``: release resources at shutdown, after in-flight work drained.

    Sync hooks run on the single inference thread, so the model is never called from two
    threads at once; async hooks run on the event loop.
    """

    __service_config__: ClassVar[ServiceConfig]
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

    # ``predict`` and ``predict_batch`` are deliberately not defined here: a subclass defines
    # the one it needs, and ``@gpu_service`` checks that at least one exists.

    @classmethod
    def config(cls) -> ServiceConfig:
        """The ``ServiceConfig`` recorded by ``@gpu_service``."""
        try:
            return cls.__dict__["__service_config__"]  # type: ignore[no-any-return]
        except KeyError:
            raise ConfigError(
                f"{cls.__qualname__} is not decorated: add @gpu_service(...) above "
                f"'class {cls.__name__}'"
            ) from None

    @classmethod
    def router(cls, *, backend: BackendName = "local", **backend_options: Any) -> ServiceRouter:
        """A FastAPI ``APIRouter`` serving this model: predict route, ``/healthz``, ``/readyz``.

        ``backend="local"`` runs the model in this process with dynamic batching;
        ``backend="modal"`` calls the deployed GPU class on Modal.
        """
        from ._backends import create_backend
        from ._router import build_router

        return build_router(cls, create_backend(cls, backend, **backend_options))

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
        from ._router import build_app

        return build_app(cls, cls.router(backend=backend, **backend_options))


def batch_function(server: ModelServer[Any, Any]) -> tuple[BatchFn, bool]:
    """The callable that answers a list of items, and whether it is a coroutine function.

    ``predict_batch`` is used when the class defines it; otherwise ``predict`` is mapped over
    the list (the decorator only allows that with ``max_batch_size=1``).
    """
    batch = getattr(server, "predict_batch", None)
    if batch is not None:
        return batch, inspect.iscoroutinefunction(batch)
    single = server.predict  # type: ignore[attr-defined]
    if inspect.iscoroutinefunction(single):

        async def run_async(items: list[Any]) -> list[Any]:
            return [await single(item) for item in items]

        return run_async, True

    def run_sync(items: list[Any]) -> list[Any]:
        return [single(item) for item in items]

    return run_sync, False


def io_models(cls: type) -> tuple[type[BaseModel], type[BaseModel]]:
    """Find the request and response models of a ModelServer subclass.

    They come from the type parameters (``ModelServer[In, Out]`` on the class or a base),
    else from the annotations of ``predict`` / ``predict_batch``.
    """
    found = _models_from_parameters(cls) or _models_from_annotations(cls)
    if found is None:
        raise ConfigError(
            f"{cls.__qualname__} does not say its request and response models: subclass "
            f"ModelServer[RequestModel, ResponseModel] with two pydantic BaseModel classes, "
            f"e.g. 'class {cls.__name__}(ModelServer[EmbedIn, EmbedOut])'"
        )
    for role, model in zip(("request", "response"), found, strict=True):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise ConfigError(
                f"{cls.__qualname__}: the {role} model {model!r} is not a pydantic BaseModel "
                "subclass; define it as 'class X(BaseModel): ...'"
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
        request, response = params[0], hints["return"]
        if is_batch:
            request, response = _list_item(request), _list_item(response)
        if request is not None and response is not None:
            return request, response
    return None


def _list_item(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (list, typing.List):  # noqa: UP006
        args = typing.get_args(annotation)
        return args[0] if args else None
    return None
