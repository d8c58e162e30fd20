"""Downloading a file given as a URL (``Annotated[File, FileLimits(urls=True)]``).

``fetch_file`` takes ``https`` URLs (and ``http`` only where the guard trusts the host: with
``allow_private=True``, for tests and internal networks). Each hop, the first and every
redirect (5 at most, followed here, not by httpx), is checked by the ``AddressGuard``
(``_address_guard``, shared with whatever else reaches hosts for a client): its name
is resolved once, every address checked, and the connection made to a checked address
(``_pinned``), while the ``Host`` header, the TLS SNI and the certificate check keep the name.
No proxy from the environment is used: it would reach the name itself.

The body is streamed into a spooled temporary file (1 MiB in memory, then on disk) and cut off
as soon as it passes the limit; the whole download, resolution included, runs within
``FileLimits.url_timeout``. Every failure is an ``InputError`` whose message names the URL
(without its query or userinfo) and why, never an address it resolved to nor an exception's
text; those go to ``internal``, for the server's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.message
import mimetypes
import ssl
import tempfile
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import urlsplit

from ._address_guard import AddressGuard, Destination, Refused, Unresolvable
from ._file import DEFAULT_CONTENT_TYPE, File, FileLimits, bare_type
from ._pinned import Unreachable, default_tls, send_pinned
from .exceptions import ErrorCode, InputError

if TYPE_CHECKING:
    import httpx

__all__ = [
    "FALLBACK_MAX_BYTES",
    "MAX_REDIRECTS",
    "SPOOL_BYTES",
    "fetch_file",
    "shown_url",
]

MAX_REDIRECTS = 5
SPOOL_BYTES = 1 << 20  # kept in memory up to this size, then on disk
FALLBACK_MAX_BYTES = 64 << 20  # when neither the field nor the caller gives a limit
USER_AGENT = "modal-fastapi-kit (file fetch)"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_SHOWN_MAX = 200


class _Failed(Exception):
    """A failure inside the download, turned into the ``InputError`` at the top."""

    def __init__(self, why: str, internal: str | None = None) -> None:
        super().__init__(why)
        self.internal = internal


async def fetch_file(
    url: str,
    *,
    limits: FileLimits,
    allow_private: bool,
    field: str = "file",
    max_bytes: int | None = None,
    guard: AddressGuard | None = None,
    tls: ssl.SSLContext | None = None,
) -> File:
    """Download the file at ``url`` within ``limits``, for the field ``field``.

    - ``allow_private``: reach private, loopback and other non-public addresses, and ``http``
      (the service's ``allow_private_urls``); the metadata addresses stay refused.
    - ``max_bytes``: the cap when ``limits.max_bytes`` is ``None`` (the route's
      ``max_body_bytes``); ``FALLBACK_MAX_BYTES`` when both are.
    - ``guard``: other rules or another resolver than ``AddressGuard(allow_private=...)``;
      its ``allow_private`` must agree.
    - ``tls``: the TLS context that checks certificates (by default certifi's CAs, or
      ``SSL_CERT_FILE``).

    Raises ``InputError``: 422 ``fetch_failed``, 413 ``file_too_large``, 415
    ``unsupported_media_type``.
    """
    if guard is None:
        guard = AddressGuard(allow_private=allow_private)
    elif guard.allow_private != allow_private:
        raise ValueError(
            f"fetch_file(allow_private={allow_private!r}) disagrees with {guard!r}; give the "
            "same value to both"
        )
    cap = limits.max_bytes or max_bytes or FALLBACK_MAX_BYTES
    shown = shown_url(url)
    try:
        return await asyncio.wait_for(
            _download(url, guard, limits, cap, field, tls), timeout=limits.url_timeout
        )
    except asyncio.TimeoutError:
        failure = _Failed(f"it did not download within {limits.url_timeout:g} s")
    except _Failed as exc:
        failure = exc
    error = InputError(
        f"could not fetch the file at {shown}: {failure}",
        status_code=422,
        code=ErrorCode.FETCH_FAILED,
    )
    error.internal = failure.internal
    raise error


def shown_url(url: str) -> str:
    """``url`` fit for a message: scheme, host, port and path, without userinfo, query or
    fragment, and cut short when long."""
    try:
        parts = urlsplit(url.strip())
        host = parts.netloc.rpartition("@")[2]
        shown = f"{parts.scheme}://{host}{parts.path}" if parts.scheme else parts.path
    except ValueError:
        shown = url.split("?", 1)[0].split("#", 1)[0]
    shown = "".join(c if c.isprintable() else "?" for c in shown)
    return shown if len(shown) <= _SHOWN_MAX else shown[: _SHOWN_MAX - 3] + "..."


async def _download(
    raw: str,
    guard: AddressGuard,
    limits: FileLimits,
    cap: int,
    field: str,
    tls: ssl.SSLContext | None,
) -> File:
    import httpx

    url = _parse(raw, None)
    context = tls or default_tls()
    timeout = httpx.Timeout(limits.url_timeout)
    for hop in range(MAX_REDIRECTS + 1):
        destination = await _check(guard, url, raw, hop)
        # A client per hop: its pool would otherwise reuse a connection made for another
        # name at the same address.
        async with httpx.AsyncClient(verify=context, trust_env=False, timeout=timeout) as client:
            try:
                response = await _open(client, url, destination)
                try:
                    if response.status_code in _REDIRECTS:
                        location = response.headers.get("location")
                        if not location:
                            raise _Failed(f"it answered {response.status_code} with no Location")
                        url = _parse(location, url)
                        continue
                    if not 200 <= response.status_code < 300:
                        raise _Failed(f"it answered {_status(response)}; check the URL")
                    return await _body(response, url, limits, cap, field)
                finally:
                    await response.aclose()
            except httpx.TimeoutException:
                raise _Failed(f"it did not download within {limits.url_timeout:g} s") from None
            except httpx.HTTPError as exc:
                raise _Failed(
                    "the connection failed, or the answer was not valid HTTP", repr(exc)
                ) from None
    raise _Failed(f"it redirects more than {MAX_REDIRECTS} times")


def _parse(raw: str, base: httpx.URL | None) -> httpx.URL:
    """The URL ``raw`` (a redirect's Location when ``base`` is given), refused when it has
    userinfo or is not one."""
    import httpx

    try:
        url = httpx.URL(raw) if base is None else base.join(raw)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        said = "it is not a valid URL" if base is None else "it redirects to an invalid URL"
        raise _Failed(said, repr(exc)) from None
    if url.userinfo:
        if base is None:
            raise _Failed("it has a user name or password in it; those are never sent")
        raise _Failed("it redirects to a URL with a user name or password in it")
    return url


async def _check(guard: AddressGuard, url: httpx.URL, raw: str, hop: int) -> Destination:
    scheme = url.scheme
    host = url.raw_host.decode("ascii")
    port = url.port if url.port is not None else (443 if scheme == "https" else 80)
    where = f"it redirects to {shown_url(str(url))}, which" if hop else "it"
    try:
        return await guard.resolve(scheme, host, port)
    except Refused as exc:
        raise _Failed(f"{where} is refused: {exc}") from None
    except Unresolvable as exc:
        raise _Failed(f"{where} cannot be reached: {exc}", repr(exc.__cause__)) from None


async def _open(
    client: httpx.AsyncClient, url: httpx.URL, destination: Destination
) -> httpx.Response:
    """The answer to a GET of ``url`` from the first of its checked addresses that takes the
    connection."""
    headers = {"Accept": "*/*", "Accept-Encoding": "identity", "User-Agent": USER_AGENT}
    try:
        return await send_pinned(client, "GET", url, destination, headers=headers)
    except Unreachable as exc:
        raise _Failed(str(exc), exc.internal) from None


async def _body(
    response: httpx.Response, url: httpx.URL, limits: FileLimits, cap: int, field: str
) -> File:
    shown = shown_url(str(url))
    filename = _filename(response.headers.get("content-disposition"), url.path)
    content_type = response.headers.get("content-type") or (
        (filename and mimetypes.guess_type(filename)[0]) or DEFAULT_CONTENT_TYPE
    )
    if not limits.accepts(content_type):
        raise InputError(
            f"the file at {shown} is {bare_type(content_type) or 'untyped'}; '{field}' takes "
            f"{', '.join(limits.content_types)}",
            status_code=415,
            code=ErrorCode.UNSUPPORTED_MEDIA_TYPE,
        )
    length = response.headers.get("content-length", "")
    encoded = response.headers.get("content-encoding", "identity").lower() != "identity"
    if length.isdigit() and int(length) > cap and not encoded:
        _too_large(shown, f"is {int(length)} bytes (its Content-Length)", cap, field)
    with contextlib.ExitStack() as on_failure:
        spool = on_failure.enter_context(tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES))
        size = 0
        async for piece in response.aiter_bytes():
            size += len(piece)
            if size > cap:
                _too_large(shown, f"passed {cap} bytes", cap, field)
            if size > SPOOL_BYTES:  # on disk now: the write may block, so not on the loop
                await asyncio.to_thread(spool.write, piece)
            else:
                spool.write(piece)
        on_failure.pop_all()  # the File owns the spool from here
        return File.from_fileobj(spool, content_type=content_type, filename=filename)


def _too_large(shown: str, said: str, cap: int, field: str) -> NoReturn:
    raise InputError(
        f"the file at {shown} {said}, over the limit of {cap} bytes for '{field}'",
        status_code=413,
        code=ErrorCode.FILE_TOO_LARGE,
    )


def _filename(disposition: str | None, path: str) -> str | None:
    """The name from ``Content-Disposition`` (``filename*`` or ``filename``), else the last
    segment of the URL's path; only a base name, never a path."""
    name: str | None = None
    if disposition:
        message = email.message.Message()
        message["content-disposition"] = disposition
        name = message.get_filename()
    if not name:
        name = path.rsplit("/", 1)[-1]
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable()).strip()
    return name[:255] if name and name not in (".", "..") else None


def _status(response: httpx.Response) -> str:
    return f"{response.status_code} {response.reason_phrase}".strip()
