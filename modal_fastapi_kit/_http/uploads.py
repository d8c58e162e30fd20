"""Reading a file route's body into the values of its request model.

A route whose request model has ``File`` fields takes three forms of body:

- ``application/json`` (or ``+json``): left to the JSON path; ``File`` fields hold ``data:``
  URIs, or URLs where ``FileLimits(urls=True)`` (``fetch_urls`` downloads them before
  predict runs);
- ``multipart/form-data`` (``read_multipart``): a part with a filename is a file, spooled to
  disk past 1 MiB, and belongs to a ``File`` field (repeated for ``list[File]``); a part
  without one is a form field (``_http/form_fields.py``: a scalar's text, a part per member
  of a list of scalars, JSON for anything else). Each file is checked against its field's
  ``FileLimits`` before validation;
- any other content type, where the model's only required field is one ``File``
  (``read_raw``): the body is the file, streamed into a spooled temporary file, named by
  ``Content-Disposition`` if the client sent one.

What is refused, and how: a broken multipart body, a missing boundary, more parts or fields
than the model declares (a list field: at most 64 parts; plus a few), a text part over 1 MiB
or part headers over python-multipart's limits (8 headers of at most 4224 bytes each) are a
400 ``malformed_upload``; a part for a field the model does not declare (unless it keeps
extra fields), a file part for a field that is not a ``File`` field, or a second part for a
field that takes one, a 422 like any other validation error; a file over its limit a 413
``file_too_large``; a file of a type its field does not take, or a body of a type the route
does not take, a 415 ``unsupported_media_type``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.message
import json
import mimetypes
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, BinaryIO, Literal, cast

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request

from .._core.spec import ServiceSpec
from .._fetch import fetch_file
from .._file import DEFAULT_CONTENT_TYPE, File, FileField, bare_type, files_in
from ..exceptions import ErrorCode, InputError
from .form_fields import FieldKind, form_fields
from .waiting import ClientGone

__all__ = [
    "LIST_PARTS",
    "MULTIPART",
    "SPOOL_BYTES",
    "TEXT_PART_BYTES",
    "BodyKind",
    "UploadForm",
    "body_kind",
    "close_files",
    "fetch_urls",
    "read_upload",
]

MULTIPART = "multipart/form-data"
SPOOL_BYTES = 1 << 20  # a file is held in memory up to this size, then on disk
TEXT_PART_BYTES = 1 << 20  # the largest text part of a multipart body (Starlette's default)
LIST_PARTS = 64  # the most parts a list field (of files, or of scalars) takes
_SPARE_FIELDS = 8  # parts for other names that get the 422 naming them, not a 400
_URLENCODED = "application/x-www-form-urlencoded"

BodyKind = Literal["json", "multipart", "other"]


def body_kind(content_type: str | None) -> BodyKind:
    """How a body of ``content_type`` is read: as JSON, as a multipart form, or as itself."""
    kind = bare_type(content_type or "")
    main, _, sub = kind.partition("/")
    if main == "application" and (sub == "json" or sub.endswith("+json")):
        return "json"
    return "multipart" if kind == MULTIPART else "other"


@dataclass(frozen=True, slots=True)
class UploadForm:
    """How the request model of a file route is read from a multipart or raw body."""

    files: dict[str, FileField]  # by name (the field's alias)
    fields: dict[str, FieldKind]  # the other fields: text, texts (a list), or JSON
    raw: FileField | None  # the field a raw body fills, if the route takes one
    open: bool  # the model keeps fields it does not declare (extra="allow")
    max_files: int
    max_fields: int

    @classmethod
    def of(cls, spec: ServiceSpec) -> UploadForm | None:
        """The form of ``spec``'s request model; None for a model without ``File`` fields."""
        if not spec.files:
            return None
        model = spec.request_model
        files = {f.name: f for f in spec.files}
        fields = {name: kind for name, (kind, _) in form_fields(model).items()}
        others = {k: v for k, v in fields.items() if k not in files}
        # A list takes a part per member; a file field may take data: URIs as text parts.
        lists = sum(kind == "texts" for kind in others.values()) + sum(f.many for f in spec.files)
        return cls(
            files=files,
            fields=others,
            raw=spec.raw_file,
            open=model.model_config.get("extra") == "allow",
            max_files=sum(LIST_PARTS if f.many else 1 for f in spec.files),
            max_fields=len(fields) + (LIST_PARTS - 1) * lists + _SPARE_FIELDS,
        )


async def read_upload(request: Request, form: UploadForm, kind: BodyKind) -> dict[str, Any]:
    """The values of a multipart or raw body (``kind``), for the request model: ``File``s
    and form values. Raises the 400, 413, 415 or 422 above; every file made is closed when
    it does. ``ClientGone`` when the client leaves mid-body."""
    if kind == "multipart":
        return await read_multipart(request, form)
    if form.raw is None:
        given = bare_type(request.headers.get("content-type") or "") or "no content type"
        raise InputError(
            f"this route takes application/json or {MULTIPART}, not {given}; send the file "
            f"as a part of a {MULTIPART} body (curl -F '{next(iter(form.files))}=@FILE')",
            status_code=415,
            code=ErrorCode.UNSUPPORTED_MEDIA_TYPE,
        )
    return await read_raw(request, form.raw)


async def read_multipart(request: Request, form: UploadForm) -> dict[str, Any]:
    """The values of a ``multipart/form-data`` body (see the module's docstring)."""
    try:
        data = await request.form(
            max_files=form.max_files, max_fields=form.max_fields, max_part_size=TEXT_PART_BYTES
        )
    except (MultiPartException, HTTPException) as exc:  # Starlette says 400 inside an app
        reason = exc.message if isinstance(exc, MultiPartException) else str(exc.detail)
        raise InputError(
            f"the {MULTIPART} body could not be read: {reason} This route takes at most "
            f"{form.max_files} file parts and {form.max_fields} text parts of at most "
            f"{TEXT_PART_BYTES} bytes each; send files as file parts (curl -F "
            f"'{next(iter(form.files))}=@FILE')",
            status_code=400,
            code=ErrorCode.MALFORMED_UPLOAD,
        ) from None
    except ClientDisconnect:
        raise ClientGone from None
    values: dict[str, Any] = {}
    made: list[File] = []
    try:
        for name, value in data.multi_items():
            if isinstance(value, UploadFile):
                if value.filename == "" and value.size == 0:  # a browser's empty file input
                    value.file.close()
                    continue
                file = _file_of(value)
                made.append(file)
                _put_file(values, form, name, file)
            elif value != "" or name not in form.files:
                _put_text(values, form, name, value)
        _join_lists(values, form)
    except BaseException:
        close_files(made)
        for _, value in data.multi_items():
            if isinstance(value, UploadFile):
                value.file.close()
        raise
    return values


async def read_raw(request: Request, field: FileField) -> dict[str, Any]:
    """``{field: File}`` for a body that is the file itself (see the module's docstring)."""
    name = field.name
    length = request.headers.get("content-length")
    if "content-type" not in request.headers and (
        length == "0" or (length is None and "transfer-encoding" not in request.headers)
    ):  # no file at all (an empty one says its type)
        raise RequestValidationError(
            [
                {
                    "type": "missing",
                    "loc": ("body", name),
                    "msg": f"the body is empty; send the file as the body, or '{name}' as a "
                    f"{MULTIPART} part",
                    "input": None,
                }
            ]
        )
    filename = disposition_filename(request.headers.get("content-disposition"))
    content_type = _raw_type(request.headers.get("content-type"), filename, field)
    field.limits.check_type(content_type, name)
    if length is not None and length.isdigit():
        field.limits.check_size(int(length), name)
    spooled = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115
    writer = UploadFile(cast(BinaryIO, spooled))  # writes in a thread once on disk
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            field.limits.check_size(size, name)
            await writer.write(chunk)
    except ClientDisconnect:
        spooled.close()
        raise ClientGone from None
    except BaseException:
        spooled.close()
        raise
    return {name: File.from_fileobj(spooled, content_type=content_type, filename=filename)}


def disposition_filename(header: str | None) -> str | None:
    """The file name a ``Content-Disposition`` header gives (``filename*`` first), without
    any directory part."""
    if not header:
        return None
    message = email.message.Message()
    message["content-disposition"] = header
    try:
        name = message.get_filename()
    except (ValueError, LookupError):  # a filename* in an unknown charset
        return None
    return _base_name(name)


async def fetch_urls(
    item: BaseModel, *, allow_private: bool, max_bytes: int, seconds: float
) -> None:
    """Download every ``File`` of ``item`` given as a URL (``FileLimits(urls=True)``), within
    its field's limits, and check what came against them. One request's URL files are bounded
    together as a body is: at most ``LIST_PARTS`` of them, ``max_bytes`` (the route's body
    limit) in all, all within ``seconds`` (its ``request_timeout``)."""
    pending = [
        (info.alias or name, file)
        for name, info in type(item).model_fields.items()
        for file in files_in(getattr(item, name, None))
        if file.url is not None
    ]
    if not pending:
        return
    if len(pending) > LIST_PARTS:
        raise InputError(
            f"the request names {len(pending)} files by URL; it may name at most {LIST_PARTS}: "
            "send the others in requests of their own",
            status_code=422,
            code=ErrorCode.FETCH_FAILED,
        )
    try:
        await asyncio.wait_for(_fetch_all(pending, allow_private, max_bytes), seconds)
    except asyncio.TimeoutError:
        raise InputError(
            f"the request's files given by URL did not all download within {seconds:g} s "
            "(request_timeout)",
            status_code=422,
            code=ErrorCode.FETCH_FAILED,
        ) from None


async def _fetch_all(pending: list[tuple[str, File]], allow_private: bool, budget: int) -> None:
    for field, file in pending:
        url, limits = file.url, file.url_limits
        assert url is not None and limits is not None
        if budget <= 0:
            raise InputError(
                f"the files given by URL pass the request's limit of their bytes together "
                f"before '{field}'; send fewer, or smaller ones",
                status_code=413,
                code=ErrorCode.FILE_TOO_LARGE,
            )
        within = limits
        if limits.max_bytes is None or limits.max_bytes > budget:
            within = dataclasses.replace(limits, max_bytes=budget)
        fetched = await fetch_file(url, limits=within, allow_private=allow_private, field=field)
        file.resolve(fetched)
        limits.check(file, field)
        budget -= file.size


def close_files(files: Iterable[File]) -> None:
    """Close each file (its spooled upload, its temporary copy on disk)."""
    for file in files:
        file.close()


# -- internals -----------------------------------------------------------------------------


def _file_of(upload: UploadFile) -> File:
    filename = _base_name(upload.filename)
    content_type = upload.content_type or (
        (filename and mimetypes.guess_type(filename)[0]) or DEFAULT_CONTENT_TYPE
    )
    return File.from_fileobj(upload.file, content_type=content_type, filename=filename)


def _put_file(values: dict[str, Any], form: UploadForm, name: str, file: File) -> None:
    field = form.files.get(name)
    if field is None:
        takes = ", ".join(f"'{f}'" for f in form.files)
        raise _part_error(
            name,
            f"'{name}' is not a file field; the file fields are {takes}"
            + (
                f", and '{name}' takes text: send it without a filename"
                if name in form.fields
                else ""
            ),
            file.filename,
        )
    field.limits.check(file, name)
    if field.many:
        _append(values, name, file, file.filename)
    elif name in values:
        raise _part_error(name, f"'{name}' takes one file; the body has several", file.filename)
    else:
        values[name] = file


def _put_text(values: dict[str, Any], form: UploadForm, name: str, text: str) -> None:
    field = form.files.get(name)
    if field is not None and field.many:  # data: URIs or URLs, one per part
        _append(values, name, text, text)
        return
    kind = form.fields.get(name)
    if kind is None and field is None and not form.open:
        known = ", ".join(f"'{f}'" for f in [*form.files, *form.fields])
        raise _part_error(
            name, f"'{name}' is not a field of this route; its fields are {known}", text
        )
    if kind == "texts":
        _append(values, name, text, text)
        return
    if name in values:
        raise _part_error(name, f"'{name}' was sent more than once; send it in one part", text)
    if kind == "json":
        try:
            values[name] = json.loads(text)
        except ValueError:
            values[name] = text  # validation says what it should have been
    else:
        values[name] = text


def _append(values: dict[str, Any], name: str, member: Any, given: Any) -> None:
    members: list[Any] = values.setdefault(name, [])
    if len(members) == LIST_PARTS:
        raise _part_error(name, f"'{name}' takes at most {LIST_PARTS} parts", given)
    members.append(member)


def _join_lists(values: dict[str, Any], form: UploadForm) -> None:
    """A list field sent as one part holding a JSON array is that array."""
    for name, kind in form.fields.items():
        given = values.get(name)
        if kind == "texts" and isinstance(given, list) and len(given) == 1:
            text = given[0].strip()
            if text.startswith("["):  # else, or if it is not JSON: one member
                with contextlib.suppress(ValueError):
                    values[name] = json.loads(text)


def _part_error(name: str, message: str, given: Any) -> RequestValidationError:
    return RequestValidationError(
        [{"type": "multipart_part", "loc": ("body", name), "msg": message, "input": given}]
    )


def _raw_type(header: str | None, filename: str | None, field: FileField) -> str:
    """The type of a raw body's file; curl's default form type (or none) means "unknown",
    guessed from the file name."""
    if header and bare_type(header) != _URLENCODED:
        return header
    guessed = (filename and mimetypes.guess_type(filename)[0]) or None
    if guessed is None and field.limits.content_types:
        raise InputError(
            f"the body's content type is {bare_type(header) if header else 'missing'} (curl's "
            "default for --data-binary); send the file's own type, e.g. -H 'content-type: "
            f"{field.limits.content_types[0].replace('*', 'png')}'",
            status_code=415,
            code=ErrorCode.UNSUPPORTED_MEDIA_TYPE,
        )
    return guessed or DEFAULT_CONTENT_TYPE


def _base_name(name: str | None) -> str | None:
    if not name:
        return None
    return PurePosixPath(name.replace("\\", "/")).name or None
