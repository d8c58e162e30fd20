"""What every endpoint that takes a service's request model shares: its signature for FastAPI,
its body limits and request counting, the download of its URL files, the release of its files
after a failure, and the error of a deadline that passed.

The predict route (``_http/router.py``), the job submission (``_http/jobs.py``) and the
OpenAI-compatible routes build on these.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel

from .._core.spec import ServiceSpec
from .._file import File, files_in
from .._metrics import metrics_for
from ..exceptions import DeadlineExceeded
from .errors import REQUEST_ID_HEADER
from .file_answer import close_after, file_response
from .route import count_requests, limit_body
from .uploads import close_files, fetch_urls

__all__ = [
    "annotate_item",
    "answer_response",
    "late_error",
    "prepare_endpoint",
    "release_files",
    "url_fetcher",
]

_JSON = "application/json"


def prepare_endpoint(endpoint: Any, spec: ServiceSpec) -> None:
    """What ``KitRoute`` does around an endpoint of ``spec``'s API: refuse bodies over
    ``max_body_bytes`` (and, where the request model has ``File`` fields, bodies not all
    there within ``upload_timeout``), and count each answer in the service's metrics."""
    # A route that takes files bounds how long its body may take; a JSON route's clock
    # would cost every request a timer for bodies of a few bytes.
    upload_timeout = spec.config.upload_timeout if spec.files else None
    limit_body(endpoint, spec.config.max_body_bytes, upload_timeout)
    count_requests(endpoint, metrics_for(spec) if spec.config.metrics else None)


def late_error(what: str, option: str, seconds: float) -> DeadlineExceeded:
    """The error for a request whose deadline ``option`` passed before ``what`` came."""
    return DeadlineExceeded(f"no {what.removeprefix('a ')} within {option}={seconds:g}s")


def url_fetcher(spec: ServiceSpec) -> Callable[[Any], Awaitable[None]]:
    """What downloads the files of an item given as URLs, before it is submitted."""
    config = spec.config
    return functools.partial(
        fetch_urls,
        allow_private=config.allow_private_urls,
        max_bytes=config.max_body_bytes,
        seconds=config.request_timeout,
    )


def release_files(item: Any, error: Exception) -> None:
    """Close the files of a request that failed, unless the model may still be reading
    them (a deadline passed while it ran): those go when it lets go of the item."""
    if not isinstance(error, DeadlineExceeded):
        close_files(files_in(item))


def answer_response(
    spec: ServiceSpec, value: BaseModel, rid: str, files: Iterable[File] = ()
) -> Response:
    """A service's answer to the client: its JSON, or the file's bytes for a service that
    answers a file (``ModelServer[In, File]``); ``files`` (the request's) are closed once it
    is sent."""
    held = list(files)
    if spec.answers_file:
        file: File = value.root  # type: ignore[attr-defined]
        return close_after(file_response(file, rid), [*held, file])
    body: bytes = value.__pydantic_serializer__.to_json(value)
    close_files(held)
    return Response(body, media_type=_JSON, headers={REQUEST_ID_HEADER: rid})


def annotate_item(endpoint: Any, request_model: type[BaseModel]) -> None:
    """Give ``endpoint(request, item)`` the signature FastAPI reads: ``item`` is the request
    model, every other parameter the ``Request``."""
    signature = inspect.signature(endpoint)
    params = [
        p.replace(annotation=request_model) if p.name == "item" else p.replace(annotation=Request)
        for p in signature.parameters.values()
    ]
    endpoint.__signature__ = signature.replace(parameters=params, return_annotation=Response)
