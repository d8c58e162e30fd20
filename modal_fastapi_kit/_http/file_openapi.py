"""What OpenAPI (and ``/docs``) says about a route that takes or answers files.

- The request body of a file route lists, beside ``application/json`` (the model, as
  FastAPI writes it), ``multipart/form-data``: the model's fields with each ``File`` a
  ``{"type": "string", "format": "binary"}`` (an array of them for ``list[File]``; Swagger UI
  shows a file picker), a list, dict or model field a JSON string; and, for a route that
  takes the raw body, each content type its file field accepts (or
  ``application/octet-stream``) as binary.
- The 200 of a service that answers a file is the file's bytes, of any type, not JSON.
- The errors of an upload (400, 408, 413, 415) are described.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from .._core.spec import ServiceSpec
from .._file import DEFAULT_CONTENT_TYPE, FileField, FileLimits
from .errors import ErrorBody
from .form_fields import form_fields
from .uploads import LIST_PARTS, MULTIPART

__all__ = ["BINARY", "UPLOAD_ERRORS", "FileBody", "file_answer_responses", "upload_docs"]

BINARY: dict[str, Any] = {"type": "string", "format": "binary"}

UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorBody,
        "description": "The body is not readable JSON (unreadable_body), or a broken "
        "multipart body (malformed_upload)",
    },
    408: {"model": ErrorBody, "description": "The body did not arrive within upload_timeout"},
    413: {
        "model": ErrorBody,
        "description": "Body over max_body_bytes (body_too_large), or a file over its "
        "field's max_bytes (file_too_large)",
    },
    415: {
        "model": ErrorBody,
        "description": "A body or file of a content type the route does not take",
    },
}


class FileBody(Response):
    """Marks a route's 200 as a file of any type in OpenAPI; never instantiated."""

    media_type = None


def file_answer_responses() -> dict[int | str, dict[str, Any]]:
    """OpenAPI for the 200 of a service that answers a file."""
    return {
        200: {
            "description": "The file predict answered: its bytes, with its Content-Type, "
            "Content-Length and, when it has a name, Content-Disposition",
            "content": {"*/*": {"schema": BINARY}},
        }
    }


def upload_docs(spec: ServiceSpec) -> dict[str, Any]:
    """The ``openapi_extra`` of a file route: its multipart and raw request bodies."""
    content: dict[str, Any] = {MULTIPART: _multipart(spec)}
    raw = spec.raw_file
    if raw is not None:
        said = {"schema": {**BINARY, "description": _file_said(raw, "The file itself")}}
        for kind in raw.limits.content_types or (DEFAULT_CONTENT_TYPE,):
            if kind not in ("application/json", MULTIPART):
                content[kind] = said
    return {"requestBody": {"content": content}}


def _multipart(spec: ServiceSpec) -> dict[str, Any]:
    files = {f.name: f for f in spec.files}
    properties: dict[str, Any] = {}
    encoding: dict[str, Any] = {}
    for name, (kind, schema) in form_fields(spec.request_model).items():
        field = files.get(name)
        if field is None:
            properties[name] = {"maxItems": LIST_PARTS, **schema} if kind == "texts" else schema
            continue
        said = _file_said(field, "A file part")
        if field.many:
            properties[name] = {
                "type": "array",
                "items": BINARY,
                "maxItems": LIST_PARTS,
                "description": said + "; one part per file",
            }
        else:
            properties[name] = {**BINARY, "description": said}
        if field.limits.content_types:
            encoding[name] = {"contentType": ", ".join(field.limits.content_types)}
    body: dict[str, Any] = {"type": "object", "properties": properties}
    if spec.request_model.model_config.get("extra") != "allow":
        body["additionalProperties"] = False  # a part for another name is refused
    required = spec.request_model.model_json_schema().get("required")
    if required:
        body["required"] = required
        for name in required:  # in a form, an empty list is no part at all: missing
            if properties.get(name, {}).get("type") == "array":
                properties[name] = {"minItems": 1, **properties[name]}
    media: dict[str, Any] = {"schema": body}
    if encoding:
        media["encoding"] = encoding
    return media


def _file_said(field: FileField, start: str) -> str:
    limits: FileLimits = field.limits
    said = start
    if limits.content_types:
        said += f" of type {', '.join(limits.content_types)}"
    if limits.max_bytes is not None:
        said += f", at most {limits.max_bytes} bytes"
    return said
