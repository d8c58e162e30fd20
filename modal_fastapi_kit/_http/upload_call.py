"""Calling a file route's endpoint for a multipart or raw body, the way FastAPI would.

FastAPI reads a route's body as JSON (or as its own ``Form``/``UploadFile`` parameters);
the kit's predict route takes one request model, whose ``File`` fields may also come as
multipart parts or as the raw body. For such a body ``KitRoute`` reads it into the model's
values itself (``_http/uploads.py``), then has FastAPI solve the route's dependencies with
them as the body (``solve_dependencies``: the merged route's dependencies, the API-key
guard, a user's ``include_router(..., dependencies=[...])``, dependency overrides), raises
the usual ``RequestValidationError`` for what fails validation, and calls the endpoint with
the solved values, as FastAPI's own handler does.

It needs FastAPI's request exit stacks in the scope, so it runs only under FastAPI's
routing (not in the kit's front, which hands such a request to the app untouched).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.dependencies.utils import solve_dependencies
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.background import BackgroundTasks
from starlette.requests import Request
from starlette.responses import Response

from .._core.spec import ServiceSpec
from .._file import files_in
from .direct import effective_route
from .uploads import UploadForm, body_kind, close_files, read_upload
from .waiting import ClientGone

__all__ = ["FASTAPI_STACK", "UploadCall", "take_uploads", "upload_call"]

UploadCall = Callable[[Request], Coroutine[Any, Any, Response | None]]

FASTAPI_STACK = "fastapi_inner_astack"  # FastAPI's request exit stack, in the ASGI scope
_FUNCTION_STACK = "fastapi_function_astack"
_FORM_ATTR = "__mfk_upload_form__"


def take_uploads(endpoint: Callable[..., Any], spec: ServiceSpec) -> None:
    """Let a ``KitRoute`` answer multipart and raw bodies for ``endpoint(request, item)``
    when ``spec``'s request model has ``File`` fields."""
    form = UploadForm.of(spec)
    if form is not None:
        setattr(endpoint, _FORM_ATTR, form)


def upload_call(route: APIRoute) -> UploadCall | None:
    """The call that answers a non-JSON body for ``route`` (see the module's docstring), or
    None for a route without ``File`` fields. It answers None for a JSON body."""
    form: UploadForm | None = getattr(route.endpoint, _FORM_ATTR, None)
    merged = effective_route(route)
    if form is None or merged is None:
        return None
    dependant = merged.dependant
    embed: bool = merged._embed_body_fields
    overrides = merged.dependency_overrides_provider
    endpoint = dependant.call  # the endpoint, as FastAPI calls it

    async def call(request: Request) -> Response | None:
        kind = body_kind(request.headers.get("content-type"))
        scope = request.scope
        if kind == "json" or FASTAPI_STACK not in scope or _FUNCTION_STACK not in scope:
            return None
        try:
            values = await read_upload(request, form, kind)
        except ClientGone:
            return Response(status_code=499)  # the client left mid-body; nobody reads this
        try:
            solved = await solve_dependencies(
                request=request,
                dependant=dependant,
                body=values,
                dependency_overrides_provider=overrides,
                async_exit_stack=scope[FASTAPI_STACK],
                embed_body_fields=embed,
            )
            if solved.errors:
                raise RequestValidationError(solved.errors)
            response: Response = await endpoint(**solved.values)
        except BaseException:
            close_files(files_in(values))
            raise
        if solved.background_tasks is not None:
            response.background = _both(response.background, solved.background_tasks)
        return response

    return call


def _both(first: Any, second: BackgroundTasks) -> Any:
    """Run ``first`` (a response's own background task, if any), then ``second``."""
    if first is None:
        return second
    combined = BackgroundTasks()
    combined.add_task(first)
    combined.add_task(second)
    return combined
