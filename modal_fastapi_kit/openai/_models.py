"""``GET /v1/models`` (and ``/v1/models/{id}``): the model ids served at this path.

Several OpenAI-compatible services mounted under one prefix share these routes: each lists
every service registered at the path (see ``_http.health``), so a client sees all of them.

Any id after ``/v1/models/`` reaches the route, line breaks included (Starlette's ``path``
parameter stops at them, and the request would fall through to the app's plain 404): an id
not served is OpenAI's 404 ``model_not_found`` whatever its characters.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import Request
from pydantic import BaseModel
from starlette.convertors import CONVERTOR_TYPES, Convertor, register_url_convertor

from .._core.spec import ServiceSpec
from .._http.health import services_at
from ._errors import OpenAIError, OpenAIRoute, RequestError

__all__ = ["ModelCard", "ModelList", "add_model_routes", "check_model", "model_id"]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class AnyText(Convertor[str]):
    """A path parameter of any characters, line breaks included."""

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


ANY_TEXT = "mfk_any_text"  # the convertor's name in a route's path: {name:mfk_any_text}


def model_id(spec: ServiceSpec) -> str:
    """The id a client names the model by: the class's ``model_id``, else the service name."""
    return getattr(spec.server_cls, "model_id", None) or spec.config.name


def check_model(spec: ServiceSpec, requested: str) -> None:
    """Refuse a request for a model this service does not serve (404, as OpenAI answers)."""
    served = model_id(spec)
    if requested != served:
        raise RequestError(
            f"the model {requested!r} is not served here; this endpoint serves {served!r} "
            "(GET /v1/models lists it)",
            param="model",
            code="model_not_found",
            status=404,
        )


def add_model_routes(
    router: Any, spec: ServiceSpec, backend: Any, dependencies: list[Any]
) -> dict[str, str]:
    """Add the two routes; returns the list route's name as a shared route (``"models"``),
    whose registry both routes answer from (they sit under the same prefix)."""
    created = int(time.time())
    names = {"models": f"{spec.config.name}.models"}
    if ANY_TEXT not in CONVERTOR_TYPES:
        register_url_convertor(ANY_TEXT, AnyText())

    def cards(request: Request) -> list[ModelCard]:
        return [
            ModelCard(id=model_id(s.spec), created=created, owned_by=s.spec.config.name)
            for s in services_at(request, backend, "models")
        ]

    async def list_models(request: Request) -> ModelList:
        return ModelList(data=cards(request))

    async def retrieve_model(request: Request, model: str) -> ModelCard:
        for card in cards(request):
            if card.id == model:
                return card
        raise RequestError(
            f"the model {model!r} is not served here",
            param="model",
            code="model_not_found",
            status=404,
        )

    errors: dict[int | str, dict[str, Any]] = {404: {"model": OpenAIError}}
    router.add_api_route(
        "/v1/models",
        list_models,
        methods=["GET"],
        name=names["models"],
        summary="List the models served here",
        tags=[spec.name],
        dependencies=dependencies,
        response_model=ModelList,
        route_class_override=OpenAIRoute,
    )
    router.add_api_route(
        f"/v1/models/{{model:{ANY_TEXT}}}",
        retrieve_model,
        methods=["GET"],
        name=f"{spec.config.name}.model",
        summary="One model served here",
        tags=[spec.name],
        dependencies=dependencies,
        response_model=ModelCard,
        responses=errors,
        route_class_override=OpenAIRoute,
    )
    return names
