"""``File``: a file in a request or an answer (an image, audio, a document), and its limits.

A request model declares ``image: File`` (or ``Annotated[File, FileLimits(...)]``, ``File |
None``, ``list[File]``); ``predict`` gets a ``File`` whatever form it arrived in:

- over HTTP as a part of a ``multipart/form-data`` body, as the raw body (when the model is
  one file field), or in JSON as a ``data:`` URI (base64), or as an ``https`` URL where the
  field allows it (the HTTP side downloads it before ``predict`` runs);
- in Python from bytes (``File(b"...", content_type="image/png")``), a path
  (``File.from_path``) or an open binary file (``File.from_fileobj``).

A ``File`` in a JSON answer is a ``data:`` URI; a service whose response model is ``File``
answers the bytes themselves. Between the web tier and the GPU tier on Modal a file travels as
bytes beside the JSON (``file_wire``), never as base64.

This module imports neither the web stack nor the server: the client uses it as it is.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import mimetypes
import os
import tempfile
import types
import typing
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated, Any, ClassVar
from urllib.parse import unquote_to_bytes

from pydantic import BaseModel, GetCoreSchemaHandler, GetJsonSchemaHandler, RootModel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from .exceptions import ErrorCode, InputError

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "WIRE_FILES",
    "WIRE_MARKER",
    "File",
    "FileAnswer",
    "FileField",
    "FileLimits",
    "bare_type",
    "file_fields",
    "file_json_schema",
    "files_in",
]

DEFAULT_CONTENT_TYPE = "application/octet-stream"
# The key, in a pydantic serialization or validation context, of the list that holds the
# files of a model travelling between tiers: each File field is written as a marker that
# indexes it, and read back from it.
WIRE_FILES = "mfk_files"
WIRE_MARKER = "mfk-file:"
_READ_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class FileLimits:
    """What a ``File`` field accepts: ``Annotated[File, FileLimits(max_bytes=..., ...)]``.

    - ``max_bytes``: the largest file, in bytes (413 ``file_too_large`` above it); ``None``
      leaves only the route's ``max_body_bytes``.
    - ``content_types``: the accepted types, exact (``"image/png"``) or by family
      (``"image/*"``); a file of another type is a 415 ``unsupported_media_type``. Empty: any.
    - ``urls``: also take an ``https`` URL in JSON, downloaded before ``predict`` runs within
      ``max_bytes`` and ``url_timeout`` seconds, and never from a loopback, private or
      link-local address (unless the service sets ``allow_private_urls=True``).
    """

    max_bytes: int | None = None
    content_types: tuple[str, ...] = ()
    urls: bool = False
    url_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.max_bytes is not None and (
            not isinstance(self.max_bytes, int) or self.max_bytes <= 0
        ):
            raise ValueError(f"FileLimits(max_bytes={self.max_bytes!r}): give bytes > 0 or None")
        if isinstance(self.content_types, str):
            raise ValueError(
                f"FileLimits(content_types={self.content_types!r}) is a string; pass a tuple: "
                f"content_types=({self.content_types!r},)"
            )
        for pattern in self.content_types:
            if pattern.count("/") != 1 or pattern.startswith("*"):
                raise ValueError(
                    f"FileLimits(content_types=...) has {pattern!r}; write 'type/subtype' or "
                    "'type/*', e.g. 'image/png' or 'image/*'"
                )
        object.__setattr__(self, "content_types", tuple(t.lower() for t in self.content_types))
        if not (isinstance(self.url_timeout, int | float) and self.url_timeout > 0):
            raise ValueError(f"FileLimits(url_timeout={self.url_timeout!r}): give seconds > 0")

    def accepts(self, content_type: str) -> bool:
        """Whether a file of ``content_type`` (parameters ignored) is accepted."""
        if not self.content_types:
            return True
        kind = bare_type(content_type)
        family = kind.partition("/")[0] + "/*"
        return kind in self.content_types or family in self.content_types

    def check_size(self, size: int, field: str) -> None:
        """Raise the 413 for a file of ``size`` bytes in ``field`` over ``max_bytes``."""
        if self.max_bytes is not None and size > self.max_bytes:
            raise InputError(
                f"the file in '{field}' is {size} bytes, over its limit of {self.max_bytes}",
                status_code=413,
                code=ErrorCode.FILE_TOO_LARGE,
            )

    def check_type(self, content_type: str, field: str) -> None:
        """Raise the 415 for a file in ``field`` of a type this field does not take."""
        if not self.accepts(content_type):
            raise InputError(
                f"the file in '{field}' is {bare_type(content_type) or 'untyped'}; this field "
                f"takes {', '.join(self.content_types)}",
                status_code=415,
                code=ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            )

    def check(self, file: File, field: str) -> None:
        """Raise the 413 or the 415 that ``file`` in ``field`` is answered with (a file
        still at its URL is checked once it is downloaded)."""
        if file.url is None:
            self.check_type(file.content_type, field)
            self.check_size(file.size, field)

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        shape = _file_shape(source, ())
        if shape is None:
            raise TypeError(
                f"FileLimits annotates a File field (File, File | None or list[File]), not "
                f"{source!r}"
            )
        schema = File.core_schema(self)
        if shape[0]:
            schema = core_schema.list_schema(schema)
        if _optional(source):
            schema = core_schema.nullable_schema(schema)
        return schema

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        one = file_json_schema(self)
        shape = schema.get("schema", schema) if schema["type"] == "nullable" else schema
        many: JsonSchemaValue = {"type": "array", "items": one} if shape["type"] == "list" else one
        return {"anyOf": [many, {"type": "null"}]} if schema["type"] == "nullable" else many


NO_LIMITS = FileLimits()


class File:
    """A file: its bytes, content type, name and size, and a path on disk on request.

    Build one from bytes (``File(data, content_type="image/png", filename="cat.png")``), a
    path (``File.from_path``) or a binary file object (``File.from_fileobj``). Read it with
    ``read()`` (all of it), ``open()`` (a reader, for large files) or ``path`` (a file on disk
    for libraries that want one; written on first use when the file is in memory, removed by
    ``close()`` or when the ``File`` is collected).
    """

    __slots__ = (
        "__weakref__",
        "_data",
        "_fileobj",
        "_path",
        "_temp",
        "content_type",
        "filename",
        "size",
        "url",
        "url_limits",
    )

    content_type: str
    filename: str | None
    size: int
    url: str | None

    def __init__(
        self,
        data: bytes | bytearray | memoryview,
        *,
        content_type: str = DEFAULT_CONTENT_TYPE,
        filename: str | None = None,
    ) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(
                f"File(data) takes bytes, not {type(data).__name__}; for a path use "
                "File.from_path(path), for an open file File.from_fileobj(f)"
            )
        self._data: bytes | None = bytes(data)
        self._fileobj: IO[bytes] | None = None
        self._path: Path | None = None
        self._temp: Any = None  # the finalizer of the temporary copy behind ``path``
        self.content_type = content_type or DEFAULT_CONTENT_TYPE
        self.filename = filename
        self.size = len(self._data)
        self.url = None
        self.url_limits: FileLimits | None = None

    # -- other ways to make one ------------------------------------------------------------

    @classmethod
    def from_path(
        cls,
        path: str | os.PathLike[str],
        *,
        content_type: str | None = None,
        filename: str | None = None,
    ) -> File:
        """The file at ``path``, read when needed; the type is guessed from its name unless
        given."""
        where = Path(path)
        if not where.is_file():
            raise FileNotFoundError(f"File.from_path: {str(where)!r} is not a file")
        file = cls._blank(
            content_type or mimetypes.guess_type(where.name)[0] or DEFAULT_CONTENT_TYPE,
            filename or where.name,
        )
        file._path = where
        file.size = where.stat().st_size
        return file

    @classmethod
    def from_fileobj(
        cls, fileobj: IO[bytes], *, content_type: str | None = None, filename: str | None = None
    ) -> File:
        """A file backed by an open, seekable binary file (a spooled upload, say), which it
        now owns: ``close()`` closes it."""
        fileobj.seek(0, io.SEEK_END)
        size = fileobj.tell()
        fileobj.seek(0)
        file = cls._blank(content_type or DEFAULT_CONTENT_TYPE, filename)
        file._fileobj = fileobj
        file.size = size
        return file

    @classmethod
    def from_data_uri(cls, uri: str, *, max_bytes: int | None = None) -> File:
        """The file a ``data:`` URI holds (``data:image/png;base64,...``).

        Raises ``ValueError`` for a URI that is not one, and ``InputError`` (413) when it
        holds more than ``max_bytes``, before decoding it.
        """
        if not uri[:5].lower() == "data:":
            raise ValueError("it is not a data: URI (data:<type>;base64,<data>)")
        header, comma, payload = uri[5:].partition(",")
        if not comma:
            raise ValueError("the data: URI has no ',' before its data")
        params = [p.strip() for p in header.split(";")]
        encoded = params[-1].lower() == "base64"
        if encoded:
            params.pop()
        content_type = ";".join(params) if params and params[0] else DEFAULT_CONTENT_TYPE
        if "/" not in content_type.partition(";")[0]:
            raise ValueError(f"the data: URI's media type {content_type!r} is not type/subtype")
        if max_bytes is not None and len(payload) * 3 // 4 > max_bytes + 2:
            raise _too_large(len(payload) * 3 // 4, max_bytes)
        if encoded:
            try:
                data = base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("the data: URI's base64 is not valid") from None
        else:
            data = unquote_to_bytes(payload)
        if max_bytes is not None and len(data) > max_bytes:
            raise _too_large(len(data), max_bytes)
        return cls(data, content_type=content_type)

    @classmethod
    def pending(cls, url: str, limits: FileLimits) -> File:
        """A file still at ``url``, to be fetched within ``limits``: the HTTP side downloads
        it (``resolve``) before predict runs."""
        file = cls._blank(DEFAULT_CONTENT_TYPE, url.rsplit("/", 1)[-1].split("?")[0] or None)
        file.url = url
        file.url_limits = limits
        return file

    @classmethod
    def _blank(cls, content_type: str, filename: str | None) -> File:
        file = cls.__new__(cls)
        file._data = None
        file._fileobj = None
        file._path = None
        file._temp = None
        file.content_type = content_type
        file.filename = filename
        file.size = 0
        file.url = None
        file.url_limits = None
        return file

    def resolve(self, fetched: File) -> None:
        """Fill a pending (URL) file with the file downloaded from its URL."""
        self._data, self._fileobj, self._path = fetched._data, fetched._fileobj, fetched._path
        fetched._fileobj = None
        self.size = fetched.size
        self.content_type = fetched.content_type
        self.filename = fetched.filename or self.filename
        self.url = None
        self.url_limits = None

    # -- reading ---------------------------------------------------------------------------

    def read(self) -> bytes:
        """All of the file's bytes."""
        if self._data is not None:
            return self._data
        with self.open() as reader:
            return reader.read()

    def open(self) -> IO[bytes]:
        """A reader of the file from its first byte; close it when done (``with``)."""
        self._require_local()
        if self._data is not None:
            return io.BytesIO(self._data)
        if self._path is not None:
            return self._path.open("rb")
        assert self._fileobj is not None
        self._fileobj.seek(0)
        return typing.cast(IO[bytes], _Borrowed(self._fileobj))

    def chunks(self, size: int = _READ_CHUNK) -> Iterator[bytes]:
        """The file's bytes in pieces of at most ``size``, for writing it somewhere."""
        with self.open() as reader:
            while piece := reader.read(size):
                yield piece

    @property
    def path(self) -> Path:
        """A path on disk holding the file (a temporary copy for a file in memory or spooled,
        removed by ``close()``)."""
        self._require_local()
        if self._path is not None:
            return self._path
        suffix = Path(self.filename).suffix if self.filename else ""
        if not suffix:
            suffix = mimetypes.guess_extension(bare_type(self.content_type)) or ""
        handle, name = tempfile.mkstemp(prefix="mfk-", suffix=suffix)
        with os.fdopen(handle, "wb") as out:
            for piece in self.chunks():
                out.write(piece)
        self._path = Path(name)
        self._temp = weakref.finalize(self, _unlink, name)
        return self._path

    def data_uri(self) -> str:
        """The file as a ``data:`` URI (base64)."""
        encoded = base64.b64encode(self.read()).decode("ascii")
        return f"data:{self.content_type};base64,{encoded}"

    def close(self) -> None:
        """Release what backs the file: a spooled upload, a temporary copy. Its bytes stay
        readable only if they were in memory."""
        if self._fileobj is not None:
            self._fileobj.close()
            self._fileobj = None
            self._data = self._data or b""
        if self._temp is not None:
            self._temp()
            self._temp = None
            self._path = None

    def _require_local(self) -> None:
        if self.url is not None:
            raise RuntimeError(
                f"the file at {self.url} has not been downloaded; files given as URLs are "
                "fetched by the service's HTTP route before predict runs"
            )

    # -- Python protocols ------------------------------------------------------------------

    def __repr__(self) -> str:
        name = f", filename={self.filename!r}" if self.filename else ""
        if self.url is not None:
            return f"File(url={self.url!r})"
        return f"File(<{self.size} bytes>, content_type={self.content_type!r}{name})"

    def __eq__(self, other: object) -> bool:
        """Same bytes and content type (the file name is not compared)."""
        if not isinstance(other, File):
            return NotImplemented
        return (
            self.url == other.url
            and bare_type(self.content_type) == bare_type(other.content_type)
            and self.size == other.size
            and self.read() == other.read()
        )

    __hash__: ClassVar[None]  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.read(), self.content_type, self.filename))

    # -- pydantic ---------------------------------------------------------------------------

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return cls.core_schema(NO_LIMITS)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return file_json_schema(NO_LIMITS)

    @classmethod
    def core_schema(cls, limits: FileLimits) -> core_schema.CoreSchema:
        """The pydantic schema of a ``File`` field with ``limits``."""

        def from_json(value: Any, info: core_schema.ValidationInfo) -> File:
            return _from_value(value, limits, info, python=False)

        def from_python(value: Any, info: core_schema.ValidationInfo) -> File:
            return _from_value(value, limits, info, python=True)

        return core_schema.json_or_python_schema(
            json_schema=core_schema.with_info_plain_validator_function(from_json),
            python_schema=core_schema.with_info_plain_validator_function(from_python),
            serialization=core_schema.plain_serializer_function_ser_schema(
                _serialize, info_arg=True
            ),
        )


@dataclass(frozen=True, slots=True)
class FileField:
    """A ``File`` field of a request model: its name, whether it holds a list of files,
    whether it is required, and its limits."""

    name: str
    many: bool
    required: bool
    limits: FileLimits


def file_fields(model: type[BaseModel]) -> tuple[FileField, ...]:
    """The top-level ``File`` fields of ``model`` (``File``, ``File | None``,
    ``list[File]``, each maybe ``Annotated`` with ``FileLimits``)."""
    found = []
    for name, info in model.model_fields.items():
        shape = _file_shape(info.annotation, tuple(info.metadata))
        if shape is not None:
            many, limits = shape
            found.append(FileField(info.alias or name, many, info.is_required(), limits))
    return tuple(found)


def files_in(value: Any) -> Iterator[File]:
    """Every ``File`` in ``value`` (a model, list, tuple or dict, at any depth)."""
    if isinstance(value, File):
        yield value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from files_in(getattr(value, name, None))
        if isinstance(value, RootModel):
            yield from files_in(value.root)
    elif isinstance(value, list | tuple):
        for member in value:
            yield from files_in(member)
    elif isinstance(value, dict):
        for member in value.values():
            yield from files_in(member)


def file_json_schema(limits: FileLimits) -> JsonSchemaValue:
    """How a ``File`` field with ``limits`` looks in JSON: a ``data:`` URI string."""
    said = "A file: a data: URI (data:<type>;base64,<data>)"
    if limits.urls:
        said += " or an https URL"
    if limits.content_types:
        said += f"; of type {', '.join(limits.content_types)}"
    if limits.max_bytes is not None:
        said += f"; at most {limits.max_bytes} bytes"
    return {"type": "string", "format": "uri", "pattern": _uri_pattern(limits), "description": said}


_TOKEN = r"[-+.\w]+"
_BASE64 = r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"


def _uri_pattern(limits: FileLimits) -> str:
    """The strings a ``File`` field with ``limits`` takes in JSON, as a regular expression
    (ECMA 262, as JSON Schema reads it): a base64 ``data:`` URI of an accepted type, or an
    http(s) URL where the field takes URLs."""
    kinds = [
        t[:-1] + _TOKEN if t.endswith("/*") else "".join("\\" + c if c in ".+$^" else c for c in t)
        for t in limits.content_types
    ] or [f"{_TOKEN}/{_TOKEN}"]
    data = f"data:(?:{'|'.join(kinds)})(?:;[-.\\w]+=[-.\\w]+)*;base64,{_BASE64}"
    return f"^(?:{data}|https?://\\S+)$" if limits.urls else f"^{data}$"


def bare_type(content_type: str) -> str:
    """``"image/PNG; q=1"`` -> ``"image/png"``."""
    return content_type.partition(";")[0].strip().lower()


# -- internals -----------------------------------------------------------------------------


class _Borrowed(io.BufferedIOBase):
    """A reader over a file the ``File`` owns: closing it leaves the file open."""

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__()
        self._raw = raw

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        return self._raw.read(-1 if size is None else size)

    def read1(self, size: int = -1) -> bytes:
        return self._raw.read(size)

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()


def _rebuild(data: bytes, content_type: str, filename: str | None) -> File:
    return File(data, content_type=content_type, filename=filename)


def _unlink(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name)


def _too_large(size: int, max_bytes: int) -> InputError:
    return InputError(
        f"the file is about {size} bytes, over its limit of {max_bytes}",
        status_code=413,
        code=ErrorCode.FILE_TOO_LARGE,
    )


def _from_value(
    value: Any, limits: FileLimits, info: core_schema.ValidationInfo, *, python: bool
) -> File:
    field = info.field_name or "file"
    if isinstance(value, File):
        file = value
    elif python and isinstance(value, bytes | bytearray | memoryview):
        file = File(value)
    elif isinstance(value, str):
        file = _from_string(value, limits, info, field)
    else:
        raise PydanticCustomError(
            "file_type",
            "a file is a data: URI string (data:<type>;base64,<data>) in JSON, or a file part "
            "in multipart/form-data",
        )
    limits.check(file, field)
    return file


def _from_string(
    value: str, limits: FileLimits, info: core_schema.ValidationInfo, field: str
) -> File:
    context = info.context
    if value.startswith(WIRE_MARKER) and isinstance(context, dict) and WIRE_FILES in context:
        files: list[File] = context[WIRE_FILES]
        index = value[len(WIRE_MARKER) :]
        if index.isdigit() and int(index) < len(files):
            return files[int(index)]
    head = value[:8].lower()
    if head.startswith("data:"):
        try:
            return File.from_data_uri(value, max_bytes=limits.max_bytes)
        except ValueError as exc:
            raise PydanticCustomError("file_data_uri", "{reason}", {"reason": str(exc)}) from None
    if head.startswith(("https://", "http://")):
        if not limits.urls:
            raise PydanticCustomError(
                "file_url_refused",
                "this field does not take URLs: send the file as a multipart part, the raw "
                "body or a data: URI (or declare the field FileLimits(urls=True))",
            )
        return File.pending(value, limits)
    raise PydanticCustomError(
        "file_data_uri",
        "a file in JSON is a data: URI (data:<type>;base64,<data>)"
        + (" or an https URL" if limits.urls else ""),
    )


def _serialize(file: File, info: core_schema.SerializationInfo) -> Any:
    if not info.mode_is_json():
        return file
    context = info.context
    if isinstance(context, dict) and isinstance(files := context.get(WIRE_FILES), list):
        files.append(file)
        return f"{WIRE_MARKER}{len(files) - 1}"
    if file.url is not None:
        return file.url
    return file.data_uri()


def _optional(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(
        None
    ) in typing.get_args(annotation)


def _file_shape(annotation: Any, metadata: tuple[Any, ...]) -> tuple[bool, FileLimits] | None:
    """(many, limits) for an annotation that is a File field, else None."""
    limits = next((m for m in metadata if isinstance(m, FileLimits)), NO_LIMITS)
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        inner, *extra = typing.get_args(annotation)
        return _file_shape(inner, (*extra, *metadata))
    if annotation is File:
        return False, limits
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _file_shape(members[0], metadata) if len(members) == 1 else None
    if origin in (list, tuple) or origin is typing.List:  # noqa: UP006
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        if len(args) == 1:
            inner = _file_shape(args[0], metadata)
            if inner is not None and not inner[0]:
                return True, inner[1]
    return None


class FileAnswer(RootModel[File]):
    """The response model of a service that answers a file (``ModelServer[In, File]``)."""
