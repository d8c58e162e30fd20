"""Files on the client's side of the wire: the body a call sends, and a file answer.

An item whose top-level ``File`` fields hold local files goes as ``multipart/form-data``:
each file a part named after its field (``list[File]``: one part per file), every other field
a form field (a string as it is, anything else as its JSON text). Any other item goes as JSON,
byte for byte what it was before files existed; a file deeper in the item, or one given as a
URL, is then a ``data:`` URI or the URL.

A service declared ``ModelServer[In, File]`` answers the file's bytes, with its content type
and ``Content-Disposition: inline; filename="..."``; ``FileAnswerReader`` makes it a
``File``.
"""

from __future__ import annotations

import json
import mimetypes
import os
import tempfile
import weakref
from collections.abc import Iterable, Mapping
from email.message import Message
from email.utils import collapse_rfc2231_value
from pathlib import PurePosixPath
from typing import IO, TYPE_CHECKING, Any

from pydantic import BaseModel

from .._file import DEFAULT_CONTENT_TYPE, File, FileField, bare_type

if TYPE_CHECKING:
    import httpx

__all__ = [
    "SPOOL_BYTES",
    "Body",
    "FileAnswerReader",
    "answer_filename",
    "aread_file_answer",
    "part_filename",
    "read_file_answer",
]

SPOOL_BYTES = 8 << 20  # a file answer larger than this is kept on disk, not in memory


class Body:
    """What every attempt of one call sends, the same bytes each time: the item's JSON, or a
    ``multipart/form-data`` form of its files and other fields (one boundary per call).

    A file part streams from what backs the file (a path, a spooled upload) in httpx's 64 KiB
    pieces, never read whole into memory; its reader is opened by the first attempt, rewound
    by httpx for each one, and closed by ``close()``.
    """

    def __init__(
        self,
        json_body: bytes = b"",
        *,
        form: Mapping[str, str] | None = None,
        parts: Iterable[tuple[str, File]] = (),
    ) -> None:
        self.json = json_body
        self.form = dict(form or {})
        self.parts = list(parts)
        self._readers: list[IO[bytes]] | None = None
        if self.parts:
            self.content_type = f"multipart/form-data; boundary={os.urandom(16).hex()}"
        else:
            self.content_type = "application/json"

    @classmethod
    def of(cls, item: BaseModel, fields: tuple[FileField, ...]) -> Body:
        """The body of ``item``, whose model has the top-level File ``fields``."""
        parts = _parts(item, fields)
        names = {f.name for f in fields}
        attrs = {a for a, i in type(item).model_fields.items() if (i.alias or a) in names}
        form = _form(item, exclude=attrs) if parts else None
        if form is None:
            return cls(item.__pydantic_serializer__.to_json(item))
        return cls(form=form, parts=[(name, file) for _, name, file in parts])

    def request_args(self) -> dict[str, Any]:
        """The keyword arguments of ``httpx.Client.build_request`` for the next attempt."""
        if not self.parts:
            return {"content": self.json}
        if self._readers is None:
            self._readers = [file.open() for _, file in self.parts]
        files = [
            (name, (part_filename(name, file), reader, file.content_type))
            for (name, file), reader in zip(self.parts, self._readers, strict=True)
        ]
        return {"data": self.form, "files": files}

    def close(self) -> None:
        """Close the readers of the file parts (the files themselves stay as they were)."""
        readers, self._readers = self._readers or [], None
        for reader in readers:
            reader.close()


def _parts(item: BaseModel, fields: tuple[FileField, ...]) -> list[tuple[str, str, File]]:
    """``(attribute, part name, file)`` for each file in the top-level File ``fields`` of
    ``item``; none when the item is better sent as JSON: it holds no file there, one of them
    is a URL (the service downloads it), or a list of files is empty where its default is
    not (no part can say so)."""
    if not fields:
        return []
    by_name = {f.name: f for f in fields}
    parts: list[tuple[str, str, File]] = []
    for attr, info in type(item).model_fields.items():
        field = by_name.get(info.alias or attr)
        if field is None:
            continue
        value = getattr(item, attr)
        many = field.many and value is not None
        files = [f for f in (value if many else [value]) if f is not None]
        if any(f.url is not None for f in files):
            return []
        if field.many and not files and info.get_default(call_default_factory=True) != []:
            return []
        parts.extend((attr, field.name, f) for f in files)
    return parts


def _form(item: BaseModel, exclude: set[str]) -> dict[str, str] | None:
    """The form fields of ``item``'s fields but ``exclude`` (by alias, as the service reads a
    form): a string as it is, anything else as its JSON text, a None left out where the
    service fills in None; None (send JSON) where a None cannot be said (its default is not
    None)."""
    infos = {info.alias or attr: info for attr, info in type(item).model_fields.items()}
    form: dict[str, str] = {}
    for name, value in item.model_dump(mode="json", by_alias=True, exclude=exclude).items():
        if value is None:
            info = infos.get(name)
            if info is not None and info.get_default(call_default_factory=True) is not None:
                return None
            continue
        form[name] = value if isinstance(value, str) else _json_text(value)
    return form


def part_filename(field: str, file: File) -> str:
    """The ``filename`` of a file part: the file's own, else the field's name with the
    extension of its type (a part without one would be read as a plain form field)."""
    if file.filename:
        return file.filename
    return field + (mimetypes.guess_extension(bare_type(file.content_type)) or "")


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def answer_filename(disposition: str | None) -> str | None:
    """The file name of a ``Content-Disposition`` header (``filename*=UTF-8''...`` first),
    without any directory part."""
    if not disposition:
        return None
    header = Message()
    header["content-disposition"] = disposition
    plain: str | None = None
    for key, value in header.get_params(header="content-disposition", unquote=True) or ():
        if key.lower() != "filename":
            continue
        if isinstance(value, tuple):  # filename*=charset''percent-encoded
            return _base(collapse_rfc2231_value(value))
        plain = plain or _base(value)
    return plain


def _base(name: str) -> str | None:
    return PurePosixPath(name.replace("\\", "/")).name or None


class FileAnswerReader:
    """Reads a file answer into a ``File``: ``write`` each piece of the body, then ``file()``.

    The body stays in memory up to ``SPOOL_BYTES``, and goes to an unnamed temporary file
    past that (closed with the ``File``, or when it is collected); the type is the answer's
    ``Content-Type``, the name that of its ``Content-Disposition``.
    """

    def __init__(self, headers: Mapping[str, str]) -> None:
        self.content_type = headers.get("content-type") or DEFAULT_CONTENT_TYPE
        self.filename = answer_filename(headers.get("content-disposition"))
        self._pieces: list[bytes] = []
        self._held = 0
        self._disk: IO[bytes] | None = None

    def write(self, chunk: bytes) -> None:
        if self._disk is not None:
            self._disk.write(chunk)
            return
        self._pieces.append(chunk)
        self._held += len(chunk)
        if self._held > SPOOL_BYTES:
            self._disk = tempfile.TemporaryFile()  # noqa: SIM115 (the File owns it)
            self._disk.writelines(self._pieces)
            self._pieces = []

    def file(self) -> File:
        """The file read (a file on disk is the ``File``'s from now on)."""
        if self._disk is None:
            data = b"".join(self._pieces)
            return File(data, content_type=self.content_type, filename=self.filename)
        disk, self._disk = self._disk, None
        file = File.from_fileobj(disk, content_type=self.content_type, filename=self.filename)
        weakref.finalize(file, disk.close)
        return file

    def discard(self) -> None:
        """Drop what was read (the body broke off)."""
        self._pieces = []
        if self._disk is not None:
            self._disk.close()
            self._disk = None


def read_file_answer(response: httpx.Response) -> File:
    """A file answer's body, read from an open ``response`` (closed after), into a ``File``.
    A body that breaks off raises its ``httpx.TransportError``, what was read dropped."""
    reader = FileAnswerReader(response.headers)
    try:
        for chunk in response.iter_bytes():
            reader.write(chunk)
    except BaseException:
        reader.discard()
        raise
    finally:
        response.close()
    return reader.file()


async def aread_file_answer(response: httpx.Response) -> File:
    """``read_file_answer``, awaited."""
    reader = FileAnswerReader(response.headers)
    try:
        async for chunk in response.aiter_bytes():
            reader.write(chunk)
    except BaseException:
        reader.discard()
        raise
    finally:
        await response.aclose()
    return reader.file()
