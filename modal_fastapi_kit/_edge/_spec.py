"""What every edge config is generated from: the public domain, the Modal origin, the limits.

``EdgeSpec`` holds the non-secret settings, ``EdgeSecrets`` the three values the edge adds to
every request (Modal's proxy-auth token and the edge secret). Both validate their input, since
every value ends up inside a config file: only plain hostnames, paths and tokens get through.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from .._config import DEFAULT_MAX_BODY_BYTES, MODAL_WEB_TIMEOUT
from .._protocol import EDGE_SECRET_HEADER, MIN_SECRET_LENGTH
from ..exceptions import ConfigError

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_READ_TIMEOUT",
    "EDGE_SECRET_ENV",
    "EDGE_SECRET_HEADER",
    "MODAL_KEY_ENV",
    "MODAL_SECRET_ENV",
    "EdgeFile",
    "EdgeSecrets",
    "EdgeSpec",
]

# Above Modal's 150 s web limit, so Modal (not the edge) decides when a request is too slow.
DEFAULT_READ_TIMEOUT = int(MODAL_WEB_TIMEOUT) + 30
DEFAULT_CONNECT_TIMEOUT = 10
MODAL_KEY_ENV = "MFK_MODAL_KEY"
MODAL_SECRET_ENV = "MFK_MODAL_SECRET"
EDGE_SECRET_ENV = "MFK_EDGE_SECRET"

_HOST_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_ADDRESS_RE = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$")
_LISTEN_RE = re.compile(r"^((\[[0-9a-fA-F:.]+\]|[0-9.]+):)?[0-9]{1,5}$")
_PATH_RE = re.compile(r"^/[A-Za-z0-9._/@+-]*$")
_ROUTE_PREFIX_RE = re.compile(r"^/[A-Za-z0-9._~/-]*$")
_MODAL_KEY_RE = re.compile(r"^wk-[A-Za-z0-9_-]{1,200}$")
_MODAL_SECRET_RE = re.compile(r"^ws-[A-Za-z0-9_-]{1,200}$")
_EDGE_SECRET_RE = re.compile(r"^[A-Za-z0-9._~-]+$")


@dataclass(frozen=True)
class EdgeFile:
    """One generated file; ``secret`` files are written with mode 600."""

    name: str
    text: str
    secret: bool = False


@dataclass(frozen=True, kw_only=True)
class EdgeSpec:
    """Non-secret settings shared by every edge."""

    domain: str
    origin: str
    listen: str = "443"
    cert: str | None = None
    key: str | None = None
    ca_bundle: str | None = None
    origin_addresses: tuple[str, ...] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    read_timeout: int = DEFAULT_READ_TIMEOUT
    connect_timeout: int = DEFAULT_CONNECT_TIMEOUT
    install_dir: str = "/etc/modal-fastapi-kit"
    stream_paths: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _HOST_RE.match(self.domain):
            raise ConfigError(
                f"--domain {self.domain!r} is not a hostname: pass the public name alone, "
                "e.g. --domain api.example.com (no scheme, port, path or wildcard)"
            )
        parts = urlsplit(self.origin)
        if (
            parts.scheme != "https"
            or not _HOST_RE.match(parts.hostname or "")
            or parts.path not in ("", "/")
            or parts.query
            or parts.username
        ):
            raise ConfigError(
                f"--origin {self.origin!r} is invalid: pass the function's HTTPS URL alone, "
                "e.g. --origin https://my-workspace--embeddings.modal.run"
            )
        if not _LISTEN_RE.match(self.listen):
            raise ConfigError(
                f"--listen {self.listen!r} is invalid: pass PORT or ADDRESS:PORT, e.g. 443 or "
                "127.0.0.1:8443"
            )
        for address in self.origin_addresses:
            if not _ADDRESS_RE.match(address):
                raise ConfigError(
                    f"--origin-address {address!r} is invalid: pass HOST:PORT, e.g. 10.0.0.5:443"
                )
        for name in ("cert", "key", "ca_bundle", "install_dir"):
            value = getattr(self, name)
            if value is not None and not _PATH_RE.match(value):
                flag = "--" + name.replace("_", "-")
                raise ConfigError(
                    f"{flag} {value!r} is invalid: pass an absolute path of letters, digits and "
                    "'._/@+-' (no spaces or quotes), e.g. /etc/ssl/private/api.pem"
                )
        if (self.cert is None) != (self.key is None):
            raise ConfigError("pass --cert and --key together (the certificate and its key)")
        for path in self.stream_paths:
            if not _ROUTE_PREFIX_RE.match(path):
                raise ConfigError(
                    f"--stream-path {path!r} is invalid: pass a path prefix such as /generate"
                )
        if not (isinstance(self.max_body_bytes, int) and self.max_body_bytes > 0):
            raise ConfigError(
                f"--max-body-bytes {self.max_body_bytes!r} is invalid: pass a positive number of "
                "bytes, e.g. 1048576"
            )
        for name, value in (
            ("--read-timeout", self.read_timeout),
            ("--connect-timeout", self.connect_timeout),
        ):
            if not (isinstance(value, int) and 1 <= value <= 3600):
                raise ConfigError(f"{name} {value!r} is invalid: pass seconds from 1 to 3600")

    @property
    def origin_host(self) -> str:
        return urlsplit(self.origin).hostname or ""

    @property
    def origin_port(self) -> int:
        return urlsplit(self.origin).port or 443

    @property
    def origin_host_header(self) -> str:
        """The ``Host`` Modal's ingress routes on: the origin's name, plus a port if not 443."""
        port = self.origin_port
        return self.origin_host if port == 443 else f"{self.origin_host}:{port}"

    @property
    def upstreams(self) -> tuple[str, ...]:
        """Where to connect: ``origin_addresses`` if given, else the origin itself."""
        return self.origin_addresses or (f"{self.origin_host}:{self.origin_port}",)

    @property
    def listen_port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def slug(self) -> str:
        """The domain as an identifier: ``api.example.com`` -> ``api-example-com``."""
        return self.domain.replace(".", "-")


@dataclass(frozen=True, kw_only=True, repr=False)
class EdgeSecrets:
    """The values the edge adds to every request; never printed by ``repr``."""

    modal_key: str
    modal_secret: str
    edge_secret: str

    def __post_init__(self) -> None:
        if not _MODAL_KEY_RE.match(self.modal_key):
            raise ConfigError(
                f"{MODAL_KEY_ENV} does not look like a Modal proxy-auth token id (wk-...): "
                "create a token under Settings > Proxy Auth Tokens in the Modal dashboard"
            )
        if not _MODAL_SECRET_RE.match(self.modal_secret):
            raise ConfigError(
                f"{MODAL_SECRET_ENV} does not look like a Modal proxy-auth token secret "
                "(ws-...): copy it from the dialog that created the token"
            )
        if len(self.edge_secret) < MIN_SECRET_LENGTH or not _EDGE_SECRET_RE.match(self.edge_secret):
            raise ConfigError(
                f"{EDGE_SECRET_ENV} must be at least {MIN_SECRET_LENGTH} characters of "
                "letters, digits and '._~-': make one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )

    def __repr__(self) -> str:
        return "EdgeSecrets(...)"

    def env_file(self) -> EdgeFile:
        """``edge.env``: the three values as ``NAME=value`` lines, for edges that read env."""
        text = (
            "# Modal proxy-auth token and edge secret. Keep this file private (mode 600).\n"
            f"{MODAL_KEY_ENV}={self.modal_key}\n"
            f"{MODAL_SECRET_ENV}={self.modal_secret}\n"
            f"{EDGE_SECRET_ENV}={self.edge_secret}\n"
        )
        return EdgeFile("edge.env", text, secret=True)


def header_title(name: str) -> str:
    """``x-mfk-edge-secret`` -> ``X-Mfk-Edge-Secret`` (how it reads in configs)."""
    return "-".join(part.capitalize() for part in name.split("-"))


EDGE_SECRET_HEADER_TITLE = header_title(EDGE_SECRET_HEADER)
# Forwarding headers a client might send that the edge removes (it sets the X-Forwarded-Host,
# -Proto and -For it trusts itself).
STRIPPED_FORWARD_HEADERS = (
    "Forwarded",
    "X-Forwarded-Port",
    "X-Forwarded-Prefix",
    "X-Forwarded-Server",
    "X-Forwarded-Ssl",
    "X-Real-IP",
)
