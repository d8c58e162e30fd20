"""CORS: which pages on other origins may call a service, and what their scripts may read.

``@gpu_service(cors_origins=[...])`` puts Starlette's ``CORSMiddleware`` outermost in the apps
the kit builds (``service_app``), outside Starlette's own error middleware and any middleware
added after, so that:

- a preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is answered
  there, before the origin lock, the keys, ``mfk serve``'s limit, the model or the metrics;
  a listed origin gets 200 with the ``Access-Control-Allow-*`` headers, any other origin, or a
  method or header not below, a plain-text 400 without ``Access-Control-Allow-Origin``;
- every answer to a listed origin carries ``Access-Control-Allow-Origin`` (its own origin,
  never ``*``), the refusals included (401, 403, 413, 503, 500), so the page can read the
  kit's error body; another origin's answer carries none, and its browser keeps the answer
  from the page. The request itself still runs: CORS decides what a page may read, not who
  may call (the keys do that).

A router mounted in the user's own app gets no CORS from the kit: that app owns its
middleware, and adds ``CORSMiddleware`` with the lists below.
"""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from .._config import ServiceConfig

__all__ = [
    "CORS_EXPOSED_HEADERS",
    "CORS_MAX_AGE",
    "CORS_METHODS",
    "CORS_REQUEST_HEADERS",
    "cors_middleware",
]

# The methods the kit's routes take.
CORS_METHODS = ("GET", "POST")
# The request headers the kit reads, beyond those a page may always send (Content-Type of a
# form or text among them; application/json and the rest need this list).
CORS_REQUEST_HEADERS = (
    "Authorization",
    "Content-Type",
    "Modal-Session-ID",
    "X-API-Key",
    "X-Request-ID",
)
# The answer headers a page's script may read (besides the always-readable ones, such as
# Content-Type): the request id to quote, when to retry, a file answer's name.
CORS_EXPOSED_HEADERS = ("Content-Disposition", "Retry-After", "X-Request-ID")
CORS_MAX_AGE = 600  # seconds a browser may keep a preflight's answer


def cors_middleware(config: ServiceConfig) -> Middleware | None:
    """The ``CORSMiddleware`` that ``config`` asks for (``cors_origins``,
    ``cors_credentials``); ``None`` when it lists no origin."""
    if not config.cors_origins:
        return None
    return Middleware(
        CORSMiddleware,
        allow_origins=config.cors_origins,
        allow_methods=CORS_METHODS,
        allow_headers=CORS_REQUEST_HEADERS,
        allow_credentials=config.cors_credentials,
        expose_headers=CORS_EXPOSED_HEADERS,
        max_age=CORS_MAX_AGE,
    )
