"""One request sent to an address the ``AddressGuard`` checked, with the name kept.

``send_pinned`` connects to the first of a ``Destination``'s addresses that takes the
connection, never to the name again (a second DNS answer cannot send it elsewhere), while the
``Host`` header, the TLS SNI and the certificate check keep the name. The caller's client
must follow no redirect and use no proxy from the environment (``trust_env=False``): a proxy
would reach the name itself. Shared by the file fetch (``_fetch``) and the webhook sender
(``_jobs/webhooks``).
"""

from __future__ import annotations

import functools
import ssl
from typing import TYPE_CHECKING

from ._address_guard import Destination

if TYPE_CHECKING:
    import httpx

__all__ = ["Unreachable", "default_tls", "send_pinned"]


class Unreachable(Exception):
    """No checked address took the connection. The message names the host, never an address;
    ``internal`` (the addresses and the errors) is for the server's log, and ``tls`` says a
    TLS handshake failed (the certificate, not the network)."""

    def __init__(self, message: str, internal: str, *, tls: bool) -> None:
        super().__init__(message)
        self.internal = internal
        self.tls = tls


async def send_pinned(
    client: httpx.AsyncClient,
    method: str,
    url: httpx.URL,
    destination: Destination,
    *,
    headers: dict[str, str],
    content: bytes | None = None,
) -> httpx.Response:
    """Send ``method url`` to the first address of ``destination`` that takes the connection,
    and return the answer unread (``stream=True``: the caller reads and closes it). Raises
    ``Unreachable``; any other ``httpx.HTTPError`` (a timeout, a broken answer) as httpx does."""
    import httpx

    sent = {"Host": url.netloc.decode("ascii"), **headers}
    extensions = {"sni_hostname": destination.host} if url.scheme == "https" else {}
    tried: list[str] = []
    for address in destination.addresses:
        request = client.build_request(
            method,
            url.copy_with(host=str(address)),
            headers=sent,
            content=content,
            extensions=extensions,
        )
        try:
            return await client.send(request, stream=True, follow_redirects=False)
        except httpx.ConnectError as exc:
            if _is_tls(exc):
                raise Unreachable(
                    f"the TLS handshake with {destination.host} failed: its certificate is not "
                    "valid for that name, or not from a trusted authority",
                    f"{address}: {exc.__cause__!r}",
                    tls=True,
                ) from None
            tried.append(f"{address}: {exc!r}")
    raise Unreachable(
        f"could not connect to {destination.host} on port {destination.port}",
        "; ".join(tried),
        tls=False,
    )


@functools.cache
def default_tls() -> ssl.SSLContext:
    """The context that checks certificates: certifi's CAs, or ``SSL_CERT_FILE``."""
    import httpx

    return httpx.create_ssl_context()


def _is_tls(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):  # httpx error <- httpcore error <- ssl.SSLError
        if seen is None:
            break
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
