"""The origin lock: only the edge may reach the app, and only the edge sets its public URL.

``OriginLock`` is a plain ASGI middleware (it never buffers, so streamed responses flow).
For every HTTP or WebSocket request it:

1. refuses it with 403 unless the edge-secret header matches the configured secret, or one of
   them: ``"CURRENT,NEXT"`` accepts both while the edge moves to the next one, so a rotation
   has no 403 window (``hmac.compare_digest``; the answer says nothing about why);
2. drops that header, so no route can echo the secret back;
3. trusts ``X-Forwarded-Host`` / ``-Proto`` / ``-For`` only on such a verified request, and
   the host only when its name is in ``public_hosts``; the request's host, scheme and client
   become the public ones, so ``request.url_for`` builds public links;
4. otherwise, with ``public_base_url`` set, uses that base URL's scheme and host.

``open_paths`` (default ``/healthz``) skip the secret check so a probe can reach liveness
without the secret; they never get forwarded headers trusted, and ``/healthz`` tells nothing
beyond "ok".
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from .._config import ServiceConfig
from .._protocol import EDGE_SECRET_HEADER, MIN_SECRET_LENGTH
from ..exceptions import ConfigError

__all__ = [
    "EDGE_SECRET_HEADER",
    "MIN_SECRET_LENGTH",
    "OriginLock",
    "apply_origin_lock",
]

logger = logging.getLogger("modal_fastapi_kit")

DEFAULT_OPEN_PATHS = ("/healthz",)
_REFUSED_BODY = b'{"detail":"forbidden","code":"forbidden"}'
_SECRET_HINT = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


class OriginLock:
    """ASGI middleware: refuse requests that skipped the edge; give the app its public URL.

    ``secret=None`` turns the check off and keeps only the ``public_base_url`` rewrite;
    several comma-separated secrets are all accepted.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        secret: str | None,
        public_hosts: Iterable[str] = (),
        public_base_url: str | None = None,
        open_paths: Iterable[str] = DEFAULT_OPEN_PATHS,
        header: str = EDGE_SECRET_HEADER,
    ) -> None:
        secrets = [s.strip() for s in (secret or "").split(",") if s.strip()]
        if secret is not None and not secrets:
            raise ConfigError(f"the edge secret is empty; make one with {_SECRET_HINT}")
        for value in secrets:
            if len(value) < MIN_SECRET_LENGTH:
                raise ConfigError(
                    f"an edge secret is {len(value)} characters long; use at least "
                    f"{MIN_SECRET_LENGTH}, e.g. from {_SECRET_HINT}"
                )
        self.app = app
        self._secrets = [value.encode() for value in secrets] if secret is not None else None
        self._header = header.lower().encode("latin-1")
        self._hosts = frozenset(h.lower() for h in public_hosts)
        self._base: tuple[str, str] | None = None
        if public_base_url is not None:
            parts = urlsplit(public_base_url)
            self._base = (parts.scheme, parts.netloc.lower())
            self._hosts |= {(parts.hostname or "").lower()}
        self._open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = list(scope["headers"])
        given = [v for k, v in headers if k == self._header]
        verified = self._secrets is not None and _matches(given, self._secrets)
        if self._secrets is not None and not verified and scope["path"] not in self._open_paths:
            await _refuse(scope, send)
            return
        headers = [(k, v) for k, v in headers if k != self._header]
        public = _forwarded(headers, self._hosts) if verified else None
        scope = dict(scope, headers=headers)
        if public is not None:
            scheme, host, client = public
            _set_public(scope, scheme, host)
            if client is not None:
                scope["client"] = (client, 0)
        elif self._base is not None:
            _set_public(scope, *self._base)
        await self.app(scope, receive, send)


def apply_origin_lock(
    app: Any, config: ServiceConfig, *, environ: Mapping[str, str] | None = None
) -> None:
    """Add ``OriginLock`` to ``app`` as ``config`` asks; do nothing when it asks for neither
    ``edge_secret_env`` nor ``public_base_url``.

    Reads the secret from the environment variable named by ``config.edge_secret_env`` now,
    so call it where the app is built (inside the container on Modal). A missing or short
    secret raises ``ConfigError``: the app never starts unlocked by accident.
    """
    if config.edge_secret_env is None and config.public_base_url is None:
        return
    secret = None
    if config.edge_secret_env is not None:
        env = os.environ if environ is None else environ
        secret = env.get(config.edge_secret_env)
        if not secret:
            raise ConfigError(
                f"edge_secret_env={config.edge_secret_env!r} but the environment has no "
                f"{config.edge_secret_env}: set it to the edge's secret, or CURRENT,NEXT while "
                "rotating (on Modal, put it in a Modal Secret listed in secrets=[...]); make "
                f"one with {_SECRET_HINT}"
            )
    app.add_middleware(
        OriginLock,
        secret=secret,
        public_hosts=config.public_hosts,
        public_base_url=config.public_base_url,
    )


def _matches(given: list[bytes], secrets: list[bytes]) -> bool:
    # Exactly one header; compare_digest takes time independent of where the bytes differ,
    # and every secret is compared (no early exit).
    if len(given) != 1:
        return False
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(given[0], secret)
    return matched


def _forwarded(
    headers: list[tuple[bytes, bytes]], hosts: frozenset[str]
) -> tuple[str, str, str | None] | None:
    """(scheme, host[:port], client ip) from the edge's headers, or None if the host is not ours."""
    values = {
        k.decode("latin-1"): v.decode("latin-1").strip()
        for k, v in headers
        if k.startswith(b"x-forwarded-")
    }
    host = values.get("x-forwarded-host", "").lower()
    name, _, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
    if not name or name not in hosts or (port and not port.isdigit()):
        if host:
            logger.debug("X-Forwarded-Host %r is not in public_hosts; not trusted", host)
        return None
    scheme = values.get("x-forwarded-proto", "https").lower()
    if scheme not in ("http", "https"):
        scheme = "https"
    client = values.get("x-forwarded-for", "").split(",")[0].strip()
    try:
        ipaddress.ip_address(client)
    except ValueError:
        return scheme, host, None
    return scheme, host, client


def _set_public(scope: dict[str, Any], scheme: str, host: str) -> None:
    if scope["type"] == "websocket":
        scheme = "wss" if scheme == "https" else "ws"
    scope["scheme"] = scheme
    headers = [(k, v) for k, v in scope["headers"] if k != b"host"]
    headers.append((b"host", host.encode("latin-1")))
    scope["headers"] = headers
    name, _, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
    default = 443 if scheme in ("https", "wss") else 80
    scope["server"] = (name, int(port) if port else default)


async def _refuse(scope: Scope, send: Send) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(_REFUSED_BODY)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": _REFUSED_BODY})
