"""A file as an HTTP answer: the answer of a service declared ``ModelServer[In, File]``.

The body is the file's bytes, with its content type, ``Content-Length`` and, when the file
has a name, ``Content-Disposition: inline; filename="..."`` (RFC 6266; a name outside ASCII
also as ``filename*=UTF-8''...``). A file over 1 MiB is streamed from where it is (its path,
its spooled upload) in pieces, never read whole into memory.

Files are closed (``File.close``: a spooled upload, a temporary copy on disk) when the answer
that needed them has been sent: ``close_after``.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import quote

from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from .._file import File
from .errors import REQUEST_ID_HEADER
from .uploads import close_files

__all__ = ["IN_MEMORY_BYTES", "close_after", "content_disposition", "file_response"]

IN_MEMORY_BYTES = 1 << 20  # a larger answer is streamed in pieces of this size


def file_response(file: File, request_id: str) -> Response:
    """The answer that sends ``file``."""
    headers = {
        "content-type": file.content_type,
        "content-length": str(file.size),
        REQUEST_ID_HEADER: request_id,
    }
    if file.filename:
        headers["content-disposition"] = content_disposition(file.filename)
    if file.size <= IN_MEMORY_BYTES:
        return Response(file.read(), headers=headers)
    return StreamingResponse(file.chunks(IN_MEMORY_BYTES), headers=headers)


def content_disposition(filename: str, kind: str = "inline") -> str:
    """``inline; filename="cat.png"``; a name with other than printable ASCII gets an ASCII
    stand-in and its exact form in ``filename*`` (RFC 6266, RFC 5987)."""
    plain = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in filename)
    value = f'{kind}; filename="{plain}"'
    if plain != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return value


def close_after(response: Response, files: Iterable[File]) -> Response:
    """``response``, which closes ``files`` once it has been sent (after its own
    background task, if it has one)."""
    held = list(files)
    if held:
        previous = response.background

        async def close() -> None:
            try:
                if previous is not None:
                    await previous()
            finally:
                close_files(held)

        response.background = BackgroundTask(close)
    return response
