"""A client's options, checked once, and what it knows of the service it calls."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from pydantic import BaseModel, ValidationError

from .._core.spec import ServiceSpec, service_spec
from .._file import File, FileAnswer
from ..exceptions import ConfigError, ErrorCode, InputError, UpstreamError
from .files import Body

__all__ = [
    "DEFAULT_RETRY_FOR",
    "SESSION_HEADER",
    "TIMEOUT_MARGIN",
    "ClientArgs",
    "ClientOptions",
    "Service",
]

DEFAULT_RETRY_FOR = 30.0
SESSION_HEADER = "modal-session-id"  # a Modal Server's affinity hint (topology="server")
TIMEOUT_MARGIN = 5.0  # over the service's own deadline, so that its 504 arrives first


class ClientArgs(TypedDict, total=False):
    """The keyword options of ``Cls.client(...)`` and ``Cls.async_client(...)``.

    ``api_key``: sent as ``Authorization: Bearer``. ``timeout``: seconds per request
    (default: the service's ``request_timeout`` + 5; for a stream, the longest gap its config
    allows + 5). ``retry_for``: seconds from the start of a call during which a retry may
    start (0: never; default 30). ``retry_unsafe``: also retry answers and failures after
    which the input may have run (500, 502, 504, a broken connection). ``headers``: sent with
    every request. ``session_id``: sent as ``Modal-Session-ID``, which a Modal Server's router
    uses to send one client's requests to the same container when it can; a service with
    ``sticky_sessions=True`` gets one random id per client unless this is given.
    """

    api_key: str | None
    timeout: float | None
    retry_for: float
    retry_unsafe: bool
    headers: Mapping[str, str] | None
    session_id: str | None


class Service:
    """What a client knows about the service: its route, models, whether it streams, and
    whether it answers a file."""

    def __init__(self, server_cls: type[Any]) -> None:
        spec: ServiceSpec = service_spec(server_cls)
        if spec.api is not None:
            raise ConfigError(
                f"{spec.name} serves an OpenAI-compatible API, not the kit's predict route: "
                "call it with the openai SDK, OpenAI(base_url='<url>/v1', api_key=<key>)"
            )
        self.spec = spec
        self.name = spec.name
        self.route = spec.config.route
        self.streaming = spec.streaming
        self.answers_file = spec.answers_file and not spec.streaming
        config = spec.config
        wait = max(config.request_timeout, config.first_chunk_seconds)
        if spec.streaming:
            wait = max(wait, config.chunk_timeout)
        self.default_timeout = wait + TIMEOUT_MARGIN

    def encode(self, item: Any) -> Body:
        """``item`` (the request model, or a dict of its fields) as the body to send: JSON,
        or ``multipart/form-data`` when its File fields hold files."""
        model = self.spec.request_model
        if isinstance(item, Mapping):
            try:
                item = model.model_validate(item)
            except ValidationError as exc:
                message = f"the item is not a valid {model.__name__}: {_short(exc)}"
                raise InputError(message, code=ErrorCode.VALIDATION_FAILED) from exc
        elif not isinstance(item, model):
            raise TypeError(
                f"{self.name} takes a {model.__name__} (or a dict of its fields), not "
                f"{type(item).__name__}: pass {model.__name__}(...)"
            )
        return Body.of(item, self.spec.files)

    def decode(self, data: bytes | str, url: str, request_id: str) -> BaseModel | File:
        """A JSON answer (or a chunk) as the response model; a ``File`` for a service declared
        ``ModelServer[In, File]``."""
        model = self.spec.response_model
        try:
            value = model.model_validate_json(data)
        except ValidationError as exc:
            raise UpstreamError(
                f"the answer of POST {url} is not a {model.__name__}: {_short(exc)}; is the "
                f"server running the same {self.name} class as this client?",
                retry_after=None,
                request_id=request_id,
            ) from exc
        return value.root if isinstance(value, FileAnswer) else value

    def require(self, streaming: bool) -> None:
        """Refuse ``predict`` on a streaming service, and ``stream`` on one that is not."""
        if streaming and not self.streaming:
            raise TypeError(
                f"{self.name} answers with one {self.spec.response_model.__name__}, not a "
                "stream: call client.predict(item)"
            )
        if not streaming and self.streaming:
            raise TypeError(
                f"{self.name} streams its answer: iterate client.stream(item) for its "
                f"{self.spec.response_model.__name__} chunks instead of calling predict"
            )


def _short(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'item'}: {e['msg']}" for e in exc.errors()
    )


@dataclass(frozen=True)
class ClientOptions:
    """The options of one client, checked: where it sends, with which headers, how long it
    waits and retries."""

    service: Service
    url: str  # for requests: absolute with base_url, else relative to the borrowed client's
    shown: str  # the absolute URL, for messages
    headers: Mapping[str, str]
    timeout: float | None  # per attempt; None: the default, or the borrowed client's own
    retry_for: float
    retry_unsafe: bool

    @classmethod
    def resolve(
        cls,
        server_cls: type[Any],
        base_url: str | None,
        args: ClientArgs,
        *,
        borrowed_base: str | None,
        owner: str,
    ) -> ClientOptions:
        """Check ``args`` for a client of ``server_cls`` made by ``owner`` (``client`` or
        ``async_client``); ``borrowed_base`` is the base URL of an ``http_client`` passed in."""
        service = Service(server_cls)
        where = f"{service.name}.{owner}"
        unknown = set(args) - set(ClientArgs.__annotations__)
        if unknown:
            raise ConfigError(
                f"{where}() got unknown options {sorted(unknown)}: use "
                f"{', '.join(sorted(ClientArgs.__annotations__))}"
            )
        timeout = args.get("timeout")
        retry_for = args.get("retry_for", DEFAULT_RETRY_FOR)
        api_key = args.get("api_key")
        if base_url is None and borrowed_base is None:
            raise ConfigError(
                f"{where}() needs the service's URL: {where}('https://...modal.run'), "
                "or http_client= an httpx client whose base_url is the service's"
            )
        if base_url is not None and not base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"{where}(base_url={base_url!r}) is not an http(s) URL: pass e.g. "
                "'http://127.0.0.1:8000' or 'https://me--my-app-web.modal.run' (with the prefix "
                "the router is mounted under, if any: '.../ml')"
            )
        if timeout is not None and not timeout > 0:
            raise ConfigError(f"{where}(timeout={timeout!r}) must be seconds > 0 per request")
        if not retry_for >= 0:
            raise ConfigError(
                f"{where}(retry_for={retry_for!r}) must be seconds >= 0 (0: never retry)"
            )
        if api_key is not None and not api_key.strip():
            raise ConfigError(f"{where}(api_key='') is empty: pass the key, or None for no key")
        if base_url is not None:
            url = shown = base_url.rstrip("/") + service.route
        else:
            url = service.route.lstrip("/")  # joined to the borrowed client's base_url
            shown = str(borrowed_base).rstrip("/") + service.route
        headers = {"user-agent": "modal-fastapi-kit-client", **(args.get("headers") or {})}
        if api_key is not None:
            headers["authorization"] = f"Bearer {api_key}"
        session_id = args.get("session_id")
        if session_id is not None and not (isinstance(session_id, str) and session_id.strip()):
            raise ConfigError(
                f"{where}(session_id={session_id!r}) must be a non-empty str, or None for "
                "one random id per client (with sticky_sessions=True)"
            )
        if session_id is None and service.spec.config.sticky_sessions:
            session_id = os.urandom(16).hex()  # one per client: its requests stay together
        if session_id is not None:
            headers[SESSION_HEADER] = session_id
        return cls(
            service=service,
            url=url,
            shown=shown,
            headers=headers,
            timeout=timeout,
            retry_for=retry_for,
            retry_unsafe=args.get("retry_unsafe", False),
        )

    @property
    def default_timeout(self) -> float:
        """Seconds per attempt for a client this one makes: ``timeout``, or the service's."""
        return self.timeout or self.service.default_timeout
