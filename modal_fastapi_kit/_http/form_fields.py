"""How each field of a request model travels in a ``multipart/form-data`` body, read from the
model's JSON schema: the one source for reading a form (``_http/uploads.py``) and for saying
in OpenAPI what it takes (``_http/file_openapi.py``), so the two cannot disagree.

- ``text``: a scalar (string, number, boolean, enum), one part holding its text;
- ``texts``: a list of scalars, one part per member (what OpenAPI says of an array in a
  form), or one part holding a JSON array;
- ``json``: anything else (a dict, a model, a list of those), one part holding JSON.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

__all__ = ["FieldKind", "form_fields"]

FieldKind = Literal["text", "texts", "json"]


def form_fields(model: type[BaseModel]) -> dict[str, tuple[FieldKind, dict[str, Any]]]:
    """Each field of ``model`` (by alias): its kind (see the module's docstring) and its JSON
    schema as a form field (``$ref`` resolved, ``null`` left out: an absent part is None).
    ``File`` fields are in it too; the caller tells them apart."""
    schema = model.model_json_schema()
    defs: dict[str, Any] = schema.get("$defs", {})
    found: dict[str, tuple[FieldKind, dict[str, Any]]] = {}
    for name, prop in schema.get("properties", {}).items():
        resolved = _without_null(_resolve(prop, defs))
        branches = resolved.get("anyOf", [resolved])
        items = _resolve(resolved.get("items", {}), defs)
        if all(_is_scalar(_resolve(b, defs)) for b in branches):
            found[name] = ("text", _inline(resolved, defs))
        elif (
            resolved.get("type") == "array" and "prefixItems" not in resolved and _is_scalar(items)
        ):
            found[name] = ("texts", {**resolved, "items": _inline(items, defs)})
        else:
            said = {"type": "string", "contentMediaType": "application/json"}
            said["description"] = "JSON text" + (
                f": {prop['description']}" if "description" in prop else ""
            )
            if "title" in prop:
                said["title"] = prop["title"]
            found[name] = ("json", said)
    return found


_SCALARS = {"string", "integer", "number", "boolean"}


def _is_scalar(schema: dict[str, Any]) -> bool:
    if "enum" in schema or "const" in schema:
        return True
    kind = schema.get("type")
    return isinstance(kind, str) and kind in _SCALARS


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target: dict[str, Any] = defs.get(ref.removeprefix("#/$defs/"), {})
        return {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    branches = schema.get("anyOf")
    if not isinstance(branches, list):
        return schema
    kept = [b for b in branches if b.get("type") != "null"]
    rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
    if len(kept) == 1:
        return {**kept[0], **rest}
    return {**rest, "anyOf": kept}


def _inline(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with the ``$ref``s of its branches resolved (a scalar's: an enum)."""
    if "anyOf" in schema:
        return {**schema, "anyOf": [_resolve(b, defs) for b in schema["anyOf"]]}
    return schema
