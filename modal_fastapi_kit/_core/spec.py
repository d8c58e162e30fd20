"""``ServiceSpec``: what ``@gpu_service`` learned about a class, in the form the runtime needs.

It is built once, at decoration time, and recorded on the class; everything below the
decorator (runtime, batcher, router, Modal objects) reads it instead of inspecting the class
again.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel

from .._config import ServiceConfig
from .._file import FileAnswer, FileField
from ..exceptions import ConfigError

__all__ = [
    "API_ATTR",
    "JOINING_HOOKS",
    "LIFECYCLE_HOOKS",
    "SPEC_ATTR",
    "Api",
    "PredictHook",
    "RouteNames",
    "ServiceSpec",
    "joining_form",
    "service_spec",
]

SPEC_ATTR = "__mfk_spec__"
# The ModelServer hooks besides predict / predict_batch, in the order a service runs them.
LIFECYCLE_HOOKS = ("load", "to_device", "warmup", "health", "unload")
API_ATTR = "__mfk_api__"  # a base class (the OpenAI-compatible ones) sets its Api here


@dataclass(frozen=True, slots=True)
class RouteNames:
    """The names of the routes an Api added: ``exclusive`` ones may be answered by this
    service alone (two services on one path fail at startup); ``shared`` ones (by kind, e.g.
    ``"models"``) answer for every service mounted at their path."""

    exclusive: tuple[str, ...] = ()
    shared: dict[str, str] = field(default_factory=dict)


class Api(Protocol):
    """How a service's requests reach it over HTTP: the kit's own predict route, or an
    OpenAI-compatible set of routes. Health routes are added by the kit either way."""

    def route_paths(self, spec: ServiceSpec) -> list[str]:
        """``"POST /v1/embeddings"``-style lines, for ``mfk check`` and messages."""
        ...

    def add_routes(
        self, router: Any, spec: ServiceSpec, backend: Any, dependencies: list[Any]
    ) -> RouteNames:
        """Add the routes to ``router``; ``dependencies`` guard the ones that need a key."""
        ...


# The hooks of a service whose streams join a running batch (the kit owns the step loop).
JOINING_HOOKS = ("join", "step", "leave")


def joining_form(server_cls: type) -> bool:
    """Whether the class streams in the joining form: it defines ``join``, ``step`` and
    ``leave``, or ``step`` with neither ``predict`` nor ``predict_batch`` (then ``PredictHook``
    says what is missing). A ``step`` beside a ``predict`` is the model's own helper."""
    if not callable(getattr(server_cls, "step", None)):
        return False
    if all(callable(getattr(server_cls, name, None)) for name in JOINING_HOOKS):
        return True
    return not any(
        callable(getattr(server_cls, name, None)) for name in ("predict", "predict_batch")
    )


@dataclass(frozen=True, slots=True)
class PredictHook:
    """Which predict hook the class defines, and its kind.

    ``name`` is ``"predict_batch"`` (``batch=True``) or ``"predict"``; ``asynchronous`` for
    ``async def``; ``streaming`` for a generator (``yield``), sync or async. A class that
    defines ``join``, ``step`` and ``leave`` streams in the joining form (``joining=True``,
    ``name="step"``): the kit runs the step loop and items join it between steps.
    """

    name: str
    batch: bool
    asynchronous: bool
    streaming: bool
    joining: bool = False

    @classmethod
    def of(cls, server_cls: type) -> PredictHook:
        if joining_form(server_cls):
            return cls._joining(server_cls)
        name = (
            "predict_batch" if callable(getattr(server_cls, "predict_batch", None)) else "predict"
        )
        fn = getattr(server_cls, name)
        return cls(
            name=name,
            batch=name == "predict_batch",
            asynchronous=inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn),
            streaming=inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn),
        )

    @classmethod
    def _joining(cls, server_cls: type) -> PredictHook:
        name = server_cls.__qualname__
        missing = [h for h in JOINING_HOOKS if not callable(getattr(server_cls, h, None))]
        if missing:
            raise ConfigError(
                f"{name} defines step but not {' or '.join(missing)}: a service whose streams "
                "join a running batch defines all three of 'def join(self, items)', "
                "'def step(self)' and 'def leave(self, keys)'"
            )
        kinds = {h: inspect.iscoroutinefunction(getattr(server_cls, h)) for h in JOINING_HOOKS}
        generators = [
            h
            for h in JOINING_HOOKS
            if inspect.isgeneratorfunction(getattr(server_cls, h))
            or inspect.isasyncgenfunction(getattr(server_cls, h))
        ]
        if generators:
            raise ConfigError(
                f"{name}.{generators[0]} is a generator: join, step and leave return (step "
                "returns one outcome per item for this step); the kit calls step again"
            )
        if len(set(kinds.values())) > 1:
            sync = [h for h, is_async in kinds.items() if not is_async]
            raise ConfigError(
                f"{name}: join, step and leave must all be async or all sync; "
                f"{', '.join(sync)} {'is' if len(sync) == 1 else 'are'} sync: make "
                f"{'it' if len(sync) == 1 else 'them'} 'async def' too, or none of them"
            )
        return cls(
            name="step",
            batch=True,
            asynchronous=kinds["step"],
            streaming=True,
            joining=True,
        )


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """A decorated ModelServer subclass: its class, config, models and predict hook."""

    server_cls: type
    config: ServiceConfig
    request_model: type[BaseModel]
    response_model: type[BaseModel]
    predict: PredictHook
    api: Api | None = None  # None: the kit's predict route
    files: tuple[FileField, ...] = ()  # the request model's File fields

    @property
    def answers_file(self) -> bool:
        """Whether the service answers a file (``ModelServer[In, File]``): its response
        model is ``FileAnswer`` and the route answers the file's bytes."""
        return issubclass(self.response_model, FileAnswer)

    @property
    def raw_file(self) -> FileField | None:
        """The one File field a raw body (``curl --data-binary``) fills: set when the request
        model's only required field is a single File."""
        singles = [f for f in self.files if not f.many]
        others = [
            name
            for name, info in self.request_model.model_fields.items()
            if info.is_required() and (info.alias or name) not in {f.name for f in self.files}
        ]
        if len(self.files) == 1 and len(singles) == 1 and not others:
            return singles[0]
        return None

    @property
    def name(self) -> str:
        """The class name, as messages and Modal show it."""
        return self.server_cls.__name__

    @property
    def streaming(self) -> bool:
        return self.predict.streaming

    @property
    def hook_label(self) -> str:
        """``Embedder.predict_batch``: how messages name the predict hook."""
        return f"{self.name}.{self.predict.name}"


def service_spec(server_cls: Any) -> ServiceSpec:
    """The spec ``@gpu_service`` recorded on ``server_cls`` (on the class itself, not a base)."""
    spec = vars(server_cls).get(SPEC_ATTR) if isinstance(server_cls, type) else None
    if not isinstance(spec, ServiceSpec):
        name = getattr(server_cls, "__qualname__", repr(server_cls))
        short = getattr(server_cls, "__name__", name)
        raise ConfigError(f"{name} is not decorated: add @gpu_service(...) above 'class {short}'")
    return spec
