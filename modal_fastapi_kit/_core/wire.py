"""The JSON the split topology's tiers exchange on Modal: requests, outcomes, stream chunks.

The web tier sends each validated request as its JSON dict; the GPU tier answers each item
with an envelope, never a pickled object, so either side may import the user's module under
another name:

=========================================  =======================================
``{"ok": <response JSON>}``                the item's result
``{"chunk": <response JSON>}``             one chunk of a stream
``{"error": {"code", "status", "detail"}}``  that item's (or stream's) failure
=========================================  =======================================

``code`` is the error's ``ErrorCode``, so an ``InputError`` raised on the GPU is answered
with its own 4xx and code by the web tier, and a stalled model with 503 ``stalled``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from ..exceptions import ERROR_CODES, ErrorCode, PredictError, ServingError, error_for

__all__ = [
    "PREDICT_METHOD",
    "STREAM_METHOD",
    "Wire",
    "decode_chunk",
    "decode_outcome",
    "decode_request",
    "encode_chunk",
    "encode_outcome",
    "encode_request",
]

Wire = dict[str, Any]

# The GPU class's Modal methods the web tier calls: one outcome per request, or a generator
# of chunk envelopes for a streaming service.
PREDICT_METHOD = "mfk_predict"
STREAM_METHOD = "mfk_stream"


def encode_request(item: BaseModel) -> Wire:
    wire: Wire = item.model_dump(mode="json")
    return wire


def decode_request(model: type[BaseModel], wire: Any) -> BaseModel | ServingError:
    """The request model for ``wire``, or the error for a request the GPU tier cannot read
    (the two tiers run different versions of the request model)."""
    try:
        return model.model_validate(wire)
    except ValidationError as exc:
        return PredictError(
            f"the GPU tier cannot read a request as {model.__name__} "
            f"({exc.error_count()} validation errors); deploy both tiers from the same code"
        )


def encode_outcome(outcome: BaseModel | ServingError) -> Wire:
    if isinstance(outcome, ServingError):
        return {"error": _encode_error(outcome)}
    return {"ok": outcome.model_dump(mode="json")}


def decode_outcome(model: type[BaseModel], wire: Any) -> BaseModel | ServingError:
    """The response model, or the error, an envelope stands for."""
    return _decode(model, wire, "ok")


def encode_chunk(chunk: BaseModel | ServingError) -> Wire:
    if isinstance(chunk, ServingError):
        return {"error": _encode_error(chunk)}
    return {"chunk": chunk.model_dump(mode="json")}


def decode_chunk(model: type[BaseModel], wire: Any) -> BaseModel | ServingError:
    return _decode(model, wire, "chunk")


def _encode_error(error: ServingError) -> Wire:
    return {"code": error.code.value, "status": error.status_code, "detail": error.detail}


def _decode(model: type[BaseModel], wire: Any, key: str) -> BaseModel | ServingError:
    if isinstance(wire, dict) and key in wire:
        try:
            return model.model_validate(wire[key])
        except ValidationError as exc:
            return PredictError(
                f"the GPU tier answered a value that is not a {model.__name__} "
                f"({exc.error_count()} validation errors); deploy both tiers from the same code"
            )
    if isinstance(wire, dict) and isinstance(error := wire.get("error"), dict):
        detail = str(error.get("detail", "the GPU tier failed"))
        try:
            code = ErrorCode(error.get("code"))
        except ValueError:
            return PredictError(detail)
        status = error.get("status")
        if ERROR_CODES[code].status is None and isinstance(status, int) and 400 <= status <= 499:
            return error_for(code, detail, status_code=status)
        return error_for(code, detail, retry_after=ERROR_CODES[code].error.retry_after)
    return PredictError(f"the GPU tier answered {type(wire).__name__}, not an envelope")
