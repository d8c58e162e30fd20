"""What the split topology's tiers exchange on Modal: requests, outcomes, stream chunks.

The web tier sends each validated request as its JSON; the GPU tier answers each item with an
envelope, never a pickled object, so either side may import the user's module under another
name. Files travel as bytes beside the JSON, never as base64: each ``File`` in the JSON is the
marker ``"mfk-file:<i>"``, the index of its entry in ``files``, and each entry is plain data,
``(data: bytes, content_type: str, filename: str | None)``, which Modal pickles as it is.

=====================================================  ======================================
``<request JSON>``                                     a request without files (and every
                                                       request of an older web tier)
``{"request": <request JSON>, "files": [...]}``        a request carrying files
``{"ok": <response JSON>}``                            the item's result
``{"ok": <response JSON>, "files": [...]}``            a result carrying files (a file answer)
``{"chunk": <response JSON>}`` (``"files"`` as ``ok``)  one chunk of a stream
``{"error": {"code", "status", "detail"}}``            that item's (or stream's) failure
=====================================================  ======================================

``code`` is the error's ``ErrorCode``, so an ``InputError`` raised on the GPU is answered
with its own 4xx and code by the web tier, and a stalled model with 503 ``stalled``. A request
the GPU tier cannot read (the tiers run different code, or a file marker names no file) is
answered with a ``predict_failed`` error, never a crash of the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from .._file import WIRE_FILES, WIRE_MARKER, File
from ..exceptions import ERROR_CODES, ErrorCode, PredictError, ServingError, error_for

__all__ = [
    "PREDICT_METHOD",
    "STREAM_METHOD",
    "Wire",
    "WireFile",
    "decode_chunk",
    "decode_outcome",
    "decode_request",
    "encode_chunk",
    "encode_outcome",
    "encode_request",
]

Wire = dict[str, Any]
# A file between the tiers: its bytes, content type and name (a list once through CBOR).
WireFile = tuple[bytes, str, str | None]

# The GPU class's Modal methods the web tier calls: one outcome per request, or a generator
# of chunk envelopes for a streaming service.
PREDICT_METHOD = "mfk_predict"
STREAM_METHOD = "mfk_stream"

_REQUEST_KEYS = {"request", "files"}
_MISMATCH = "deploy both tiers from the same code"


def encode_request(item: BaseModel) -> Wire:
    """The request's JSON, in an envelope with its files when it carries any. Reads each
    file's bytes (a spooled upload too): run it off the event loop for large files."""
    files: list[File] = []
    wire: Wire = item.model_dump(mode="json", context={WIRE_FILES: files})
    if files or wire.keys() == _REQUEST_KEYS:  # a model whose own fields look like the envelope
        return {"request": wire, "files": _to_wire(files)}
    return wire


def decode_request(model: type[BaseModel], wire: Any) -> BaseModel | ServingError:
    """The request model for ``wire``, or the error for a request the GPU tier cannot read
    (the two tiers run different versions of the request model, or a file is missing).

    Its files are in memory (bytes); a ``File``'s ``path`` writes a temporary copy, removed by
    ``close()``.
    """
    if isinstance(wire, dict) and wire.keys() == _REQUEST_KEYS:
        json, files = wire["request"], _from_wire(wire["files"])
    else:  # no files (or an older web tier)
        json, files = wire, []
    if isinstance(files, ServingError):
        return files
    try:
        return model.model_validate(json, context={WIRE_FILES: files})
    except ValidationError as exc:
        return PredictError(
            f"the GPU tier cannot read a request as {model.__name__} ({_said(exc, files)}); "
            f"{_MISMATCH}"
        )
    except ServingError as exc:  # a File field's limits (413, 415), checked again here
        return exc


def encode_outcome(outcome: BaseModel | ServingError) -> Wire:
    if isinstance(outcome, ServingError):
        return {"error": _encode_error(outcome)}
    return _encode(outcome, "ok")


def decode_outcome(model: type[BaseModel], wire: Any) -> BaseModel | ServingError:
    """The response model, or the error, an envelope stands for."""
    return _decode(model, wire, "ok")


def encode_chunk(chunk: BaseModel | ServingError) -> Wire:
    if isinstance(chunk, ServingError):
        return {"error": _encode_error(chunk)}
    return _encode(chunk, "chunk")


def decode_chunk(model: type[BaseModel], wire: Any) -> BaseModel | ServingError:
    return _decode(model, wire, "chunk")


def _encode(value: BaseModel, key: str) -> Wire:
    files: list[File] = []
    wire: Wire = {key: value.model_dump(mode="json", context={WIRE_FILES: files})}
    if files:
        wire["files"] = _to_wire(files)
    return wire


def _encode_error(error: ServingError) -> Wire:
    return {"code": error.code.value, "status": error.status_code, "detail": error.detail}


def _decode(model: type[BaseModel], wire: Any, key: str) -> BaseModel | ServingError:
    if isinstance(wire, dict) and key in wire:
        files = _from_wire(wire.get("files", ()))
        if isinstance(files, ServingError):
            return files
        try:
            return model.model_validate(wire[key], context={WIRE_FILES: files})
        except ValidationError as exc:
            return PredictError(
                f"the GPU tier answered a value that is not a {model.__name__} "
                f"({_said(exc, files)}); {_MISMATCH}"
            )
        except ServingError as exc:
            return exc
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


def _to_wire(files: list[File]) -> list[WireFile]:
    return [(file.read(), file.content_type, file.filename) for file in files]


def _from_wire(entries: Any) -> list[File] | ServingError:
    """The files of an envelope, in memory; the error for an entry that is not one."""
    if not isinstance(entries, list | tuple):
        return PredictError(f"the envelope's files are a {type(entries).__name__}; {_MISMATCH}")
    files = []
    for index, entry in enumerate(entries):
        if not _is_wire_file(entry):
            return PredictError(
                f"file {index} of the envelope is not (bytes, content type, file name); {_MISMATCH}"
            )
        data, content_type, filename = entry
        files.append(File(data, content_type=content_type, filename=filename))
    return files


def _is_wire_file(entry: Any) -> bool:
    return (
        isinstance(entry, Sequence)
        and not isinstance(entry, str | bytes)
        and len(entry) == 3
        and isinstance(entry[0], bytes | bytearray | memoryview)
        and isinstance(entry[1], str)
        and (entry[2] is None or isinstance(entry[2], str))
    )


def _said(exc: ValidationError, files: list[File]) -> str:
    """The validation errors, in short; a file marker that names no file is said as such."""
    for error in exc.errors():
        value = error.get("input")
        if isinstance(value, str) and value.startswith(WIRE_MARKER):
            where = ".".join(str(part) for part in error["loc"]) or "the value"
            return f"{where} names {value!r}, but the envelope carries {len(files)} file(s)"
    return f"{exc.error_count()} validation errors"
