"""``@gpu_service(...)``: validate a ModelServer subclass and record its config on it.

The decorator returns the class itself. Building routers and Modal objects from it is a
separate, explicit step (``Cls.router()``, ``Cls.modal_app()``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from ._config import DEFAULT_FILE_MAX_BODY_BYTES, ServiceConfig, check_option_names
from ._core.spec import API_ATTR, SPEC_ATTR, PredictHook, ServiceSpec, joining_form
from ._file import file_fields
from ._server import ModelServer, io_models
from .exceptions import ConfigError

__all__ = ["check_jobs", "check_predict", "gpu_service"]

S = TypeVar("S", bound=type[ModelServer[Any, Any]])


def gpu_service(_cls: object = None, /, **options: Any) -> Callable[[S], S]:
    """Declare a ModelServer subclass as a service.

    Options (all keyword, all optional; see ``ServiceConfig`` for defaults):
    ``name`` (defaults to the class name in kebab-case), ``route``, ``max_batch_size``,
    ``wait_ms``, ``max_concurrent_inputs``, ``max_queue_size``, ``isolate_failures``,
    ``max_body_bytes`` (64 MiB when the request model has ``File`` fields, else 1 MiB),
    ``upload_timeout``, ``allow_private_urls``, ``request_timeout``, ``stall_timeout``,
    ``first_chunk_timeout``, ``chunk_timeout``, ``cors_origins``, ``cors_credentials``,
    ``jobs`` (``True`` or ``JobOptions(...)``: submit, status, result and cancel routes
    beside the predict route), ``gpu``, ``packages`` and the other Modal options.

    >>> @gpu_service(gpu="A10", max_batch_size=32, route="/embed")
    ... class Embedder(ModelServer[EmbedIn, EmbedOut]): ...
    """
    if _cls is not None:
        raise ConfigError(
            f"@gpu_service was applied without parentheses to {_cls!r}; write @gpu_service() "
            "or @gpu_service(name=..., ...)"
        )
    check_option_names(options)

    def decorate(cls: S) -> S:
        if not (isinstance(cls, type) and issubclass(cls, ModelServer)):
            raise ConfigError(
                f"@gpu_service decorates a ModelServer subclass, not {cls!r}; write "
                "'class MyModel(ModelServer[RequestModel, ResponseModel]): ...'"
            )
        request_model, response_model = io_models(cls)
        files = file_fields(request_model)
        defaults: dict[str, Any] = {"name": _kebab(cls.__name__)}
        if files:  # a file service takes larger bodies unless told otherwise
            defaults["max_body_bytes"] = DEFAULT_FILE_MAX_BODY_BYTES
        config = ServiceConfig.from_options({**defaults, **options})
        check_predict(cls, config)
        spec = ServiceSpec(
            server_cls=cls,
            config=config,
            request_model=request_model,
            response_model=response_model,
            predict=PredictHook.of(cls),
            api=getattr(cls, API_ATTR, None),
            files=files,
        )
        check_jobs(spec)
        setattr(cls, SPEC_ATTR, spec)
        cls.request_model = request_model
        cls.response_model = response_model
        return cls

    return decorate


def check_predict(cls: type, config: ServiceConfig) -> None:
    """Refuse a class with no predict hook, or only ``predict`` where batches are asked for."""
    if joining_form(cls):
        return  # the joining form (join, step, leave): ``PredictHook.of`` checks it
    has_single = callable(getattr(cls, "predict", None))
    has_batch = callable(getattr(cls, "predict_batch", None))
    if not (has_single or has_batch):
        raise ConfigError(
            f"{cls.__qualname__} defines neither predict nor predict_batch: add "
            "'def predict(self, item)' or 'def predict_batch(self, items)' (or join, step "
            "and leave, for streams that join a running batch)"
        )
    if config.batched and not has_batch:
        raise ConfigError(
            f"{cls.__qualname__} sets max_batch_size={config.max_batch_size} but defines only "
            "predict: define 'def predict_batch(self, items)' or set max_batch_size=1"
        )


def check_jobs(spec: ServiceSpec) -> None:
    """Refuse ``jobs`` where a job would have no single answer to keep, or no route."""
    if spec.config.jobs is None:
        return
    name = spec.server_cls.__qualname__
    if spec.streaming:
        raise ConfigError(
            f"{name} streams its answers and sets jobs: a job keeps one answer to be read "
            "later, a stream is read as it is made; drop jobs, or serve the long work from a "
            "class whose predict returns (a job's progress can say how far it is)"
        )
    if spec.api is not None:
        raise ConfigError(
            f"{name} serves an OpenAI-compatible API and sets jobs: jobs go beside the kit's "
            "own predict route; serve the long work from a ModelServer subclass of its own"
        )


def _kebab(name: str) -> str:
    """``TextEmbedder`` -> ``text-embedder``: a default service name Modal accepts."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", name)
    return re.sub(r"[^a-z0-9-]+", "-", words.lower()).strip("-")[:63] or "model-server"
