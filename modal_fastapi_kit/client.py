"""Typed HTTP clients for a service, made from its class.

    with Embedder.client("https://me--embeddings-api-web.modal.run", api_key=KEY) as client:
        vector = client.predict(EmbedIn(text="hello")).embedding

    async with Generator.async_client("http://127.0.0.1:8001") as client:
        async with client.stream(GenerateIn(prompt="The lighthouse")) as pieces:
            async for piece in pieces:
                print(piece.text, end="")

The route comes from the service's config and is appended to ``base_url``, so a router
mounted under ``/ml`` is reached with ``base_url="https://host/ml"``. Every call carries an
``X-Request-ID`` (one is made when none is given) and the API key as
``Authorization: Bearer``.

Retries, within ``retry_for`` seconds from the start of a call:

- a 503 or 429 answer (the input was not run: loading, queue full, stalled, shutting down),
  after its ``Retry-After``, else after a short backoff; never the 503 of a model that failed
  to load, since waiting changes nothing;
- a connection that could not be made (nothing was sent).

A call that may have run (the connection broke after the request was sent, a timeout, a 500,
502 or 504) is retried only with ``retry_unsafe=True``. Failures raise the exceptions of
``modal_fastapi_kit.exceptions``, with ``status_code``, ``detail`` and ``request_id``.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic

import httpx
from pydantic import BaseModel, ValidationError

from ._core.spec import ServiceSpec, service_spec
from ._http.errors import REQUEST_ID_HEADER
from ._server import RequestT, ResponseT
from .exceptions import (
    BackendUnavailable,
    ConfigError,
    DeadlineExceeded,
    InputError,
    LoadFailed,
    ModelStalled,
    NotReadyError,
    PredictError,
    QueueFullError,
    ServingError,
    Unauthorized,
    UpstreamError,
)

if TYPE_CHECKING:
    from ._server import ModelServer

__all__ = [
    "DEFAULT_RETRY_FOR",
    "AsyncChunkStream",
    "AsyncServiceClient",
    "ChunkStream",
    "Reply",
    "ServiceClient",
    "error_from_answer",
]

DEFAULT_RETRY_FOR = 30.0
TIMEOUT_MARGIN = 5.0  # over the service's own deadline, so that its 504 arrives first
FIRST_BACKOFF = 0.2  # seconds before a retry that no Retry-After times; doubled each time
MAX_BACKOFF = 2.0

# What a kit 503 says (its ``detail``), and the error it is; the first match wins.
_UNAVAILABLE: tuple[tuple[str, type[ServingError]], ...] = (
    ("failed to load", LoadFailed),
    ("queue is full", QueueFullError),
    ("stall_timeout", ModelStalled),
    ("cannot be reached", BackendUnavailable),
    ("still loading", NotReadyError),
    ("shutting down", NotReadyError),
    ("still looking up", NotReadyError),
    ("stream was stopped", NotReadyError),
)
# What an ``event: error`` of a stream says after its first chunk, and the error it is.
_STREAM_FAILED: tuple[tuple[str, type[ServingError]], ...] = (
    ("predict failed", PredictError),
    ("within", DeadlineExceeded),
    *_UNAVAILABLE,
)


@dataclass(frozen=True)
class Reply(Generic[ResponseT]):
    """An answer with what came with it: ``value`` is the response model, ``request_id`` the
    id the server answered under, ``attempts`` how many requests it took (retries + 1)."""

    value: ResponseT
    request_id: str
    attempts: int


def error_from_answer(
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    request_id: str | None = None,
) -> ServingError:
    """The kit's exception for an error answer: 401 ``Unauthorized``, other 4xx
    ``InputError`` (with that status), 500 ``PredictError``, 502 ``UpstreamError``, 503 by
    its detail (``NotReadyError``, ``QueueFullError``, ``LoadFailed``, ...), 504
    ``DeadlineExceeded``, anything else a ``ServingError`` with ``status_code`` set."""
    detail, said_id = _read_error_body(body, status)
    error: ServingError
    if status == 401:
        error = Unauthorized(detail)
    elif 400 <= status <= 499:
        error = InputError(detail, status_code=status)
    elif status == 500:
        error = PredictError(detail)
    elif status == 502:
        error = UpstreamError(detail)
    elif status == 504:
        error = DeadlineExceeded(detail)
    elif status == 503:
        error = _kind(detail, _UNAVAILABLE)(detail)
    else:
        error = ServingError(detail)
    error.status_code = status
    error.retry_after = None if status == 401 else _retry_after(headers.get("retry-after"))
    error.request_id = said_id or headers.get(REQUEST_ID_HEADER) or request_id
    return error


def _kind(detail: str, table: tuple[tuple[str, type[ServingError]], ...]) -> type[ServingError]:
    for words, kind in table:
        if words in detail:
            return kind
    return ServingError


def _read_error_body(body: bytes, status: int) -> tuple[str, str | None]:
    """``(detail, request_id)`` of an error body: the kit's JSON, FastAPI's field errors, or
    whatever text a proxy answered."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and "detail" in parsed:
        detail = parsed["detail"]
        said = parsed.get("request_id")
        text = _field_errors(detail) if isinstance(detail, list) else str(detail)
        return text, said if isinstance(said, str) else None
    text = body.decode("utf-8", "replace").strip()[:300]
    return text or f"HTTP {status} with no body", None


def _field_errors(errors: list[Any]) -> str:
    """FastAPI's 422 list as one line: ``text: String should have at least 1 character``."""
    parts = []
    for error in errors:
        if not isinstance(error, dict):
            parts.append(str(error))
            continue
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        parts.append(f"{where}: {error.get('msg', error)}")
    return "; ".join(parts)


def _retry_after(value: str | None) -> int | None:
    """``Retry-After`` in whole seconds (it may be a number or an HTTP date), or None."""
    if value is None:
        return None
    try:
        return max(0, int(float(value)))
    except (ValueError, OverflowError):
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0, int(when.timestamp() - time.time() + 0.999))


class _Service:
    """What a client knows about the service: its route, models, and whether it streams."""

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
        config = spec.config
        wait = max(config.request_timeout, config.first_chunk_seconds)
        if spec.streaming:
            wait = max(wait, config.chunk_timeout)
        self.default_timeout = wait + TIMEOUT_MARGIN

    def encode(self, item: Any) -> bytes:
        model = self.spec.request_model
        if isinstance(item, Mapping):
            try:
                item = model.model_validate(item)
            except ValidationError as exc:
                raise _local_input_error(exc, model) from exc
        elif not isinstance(item, model):
            raise TypeError(
                f"{self.name} takes a {model.__name__} (or a dict of its fields), not "
                f"{type(item).__name__}: pass {model.__name__}(...)"
            )
        body: bytes = item.__pydantic_serializer__.to_json(item)
        return body

    def decode(self, data: bytes | str, url: str, request_id: str) -> Any:
        model = self.spec.response_model
        try:
            return model.model_validate_json(data)
        except ValidationError as exc:
            error = UpstreamError(
                f"the answer of POST {url} is not a {model.__name__}: {_short(exc)}; is the "
                f"server running the same {self.name} class as this client?"
            )
            error.retry_after = None
            error.request_id = request_id
            raise error from exc

    def require(self, streaming: bool) -> None:
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


def _local_input_error(exc: ValidationError, model: type[BaseModel]) -> InputError:
    return InputError(f"the item is not a valid {model.__name__}: {_short(exc)}")


def _short(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'item'}: {e['msg']}" for e in exc.errors()
    )


@dataclass
class _Options:
    service: _Service
    base_url: str | None
    url: str  # for requests: absolute with base_url, else relative to the borrowed client's
    shown: str  # for messages
    headers: dict[str, str]
    timeout: float | None  # per attempt; None: the borrowed client's own
    retry_for: float
    retry_unsafe: bool


def _options(
    server_cls: type[Any],
    base_url: str | None,
    *,
    api_key: str | None,
    timeout: float | None,
    retry_for: float,
    retry_unsafe: bool,
    headers: Mapping[str, str] | None,
    borrowed_base: httpx.URL | None,
    owner: str,
) -> _Options:
    service = _Service(server_cls)
    where = f"{service.name}.{owner}"
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
        raise ConfigError(f"{where}(retry_for={retry_for!r}) must be seconds >= 0 (0: never retry)")
    if api_key is not None and not api_key.strip():
        raise ConfigError(f"{where}(api_key='') is empty: pass the key, or None for no key")
    if base_url is not None:
        url = base_url.rstrip("/") + service.route
        shown = url
    else:
        url = service.route.lstrip("/")  # joined to the borrowed client's base_url
        shown = str(borrowed_base).rstrip("/") + service.route
    sent = {"user-agent": "modal-fastapi-kit-client", **(headers or {})}
    if api_key is not None:
        sent["authorization"] = f"Bearer {api_key}"
    return _Options(
        service=service,
        base_url=base_url,
        url=url,
        shown=shown,
        headers=sent,
        timeout=timeout,
        retry_for=retry_for,
        retry_unsafe=retry_unsafe,
    )


def _client_timeout(options: _Options) -> httpx.Timeout:
    seconds = options.timeout or options.service.default_timeout
    return httpx.Timeout(seconds, connect=min(seconds, 10.0))


class _Call:
    """One call's attempts: its request id, its headers, and when (if) to try again."""

    def __init__(self, options: _Options, request_id: str | None, *, streaming: bool) -> None:
        self.options = options
        self.request_id = request_id or os.urandom(16).hex()
        self.started = time.monotonic()
        self.attempts = 0
        self._backoff = FIRST_BACKOFF
        self.headers = {
            **options.headers,
            "content-type": "application/json",
            "accept": "text/event-stream" if streaming else "application/json",
            REQUEST_ID_HEADER: self.request_id,
        }

    def request(self, http: httpx.Client | httpx.AsyncClient, body: bytes) -> httpx.Request:
        self.attempts += 1
        extra: dict[str, Any] = {}
        if self.options.timeout is not None:
            extra["timeout"] = self.options.timeout
        return http.build_request(
            "POST", self.options.url, content=body, headers=self.headers, **extra
        )

    def answered_id(self, response: httpx.Response) -> str:
        return response.headers.get(REQUEST_ID_HEADER) or self.request_id

    def answer_error(self, response: httpx.Response, body: bytes) -> ServingError:
        return error_from_answer(
            response.status_code, body, response.headers, self.answered_id(response)
        )

    def transport_error(self, exc: httpx.TransportError) -> ServingError:
        shown = self.options.shown
        error: ServingError
        if _unsent(exc):
            error = BackendUnavailable(f"cannot connect to {shown}: {type(exc).__name__}: {exc}")
        elif isinstance(exc, httpx.TimeoutException):
            error = DeadlineExceeded(
                f"no answer from {shown} within the client's timeout ({type(exc).__name__}); "
                "raise timeout= if the service may take longer"
            )
        else:
            why = (
                "retries ran out"
                if self.options.retry_unsafe
                else "it may have run, so it was not retried (pass retry_unsafe=True if "
                "running it twice is harmless)"
            )
            error = UpstreamError(
                f"the connection to {shown} broke after the request was sent "
                f"({type(exc).__name__}: {exc}); {why}"
            )
        error.retry_after = None  # no answer, so no word from the server on when to retry
        error.request_id = self.request_id
        return error

    def wait_before_retry(self, error: ServingError, *, sent: bool) -> float | None:
        """Seconds to wait before the next attempt, or None to raise ``error`` now.

        ``sent``: whether any of the request went out (an answer, or a connection that broke
        after sending)."""
        if isinstance(error, LoadFailed):
            return None  # a model that failed to load stays failed
        not_run = not sent or error.status_code in (429, 503)
        may_have_run = error.status_code in (500, 502, 504)
        if not (not_run or (self.options.retry_unsafe and may_have_run)):
            return None
        # Retry-After is the server's word on when to come back; a connection is retried soon.
        wait: float
        if sent and error.retry_after is not None:
            wait = float(error.retry_after)
        else:
            wait = self._backoff
            self._backoff = min(2 * self._backoff, MAX_BACKOFF)
        if time.monotonic() - self.started + wait > self.options.retry_for:
            return None
        return wait


def _unsent(exc: httpx.TransportError) -> bool:
    """Whether ``exc`` happened before any of the request was sent."""
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


class _SSE:
    """Server-Sent Events from lines: ``feed`` returns ``(event, data)`` at each blank line."""

    def __init__(self) -> None:
        self.event: str | None = None
        self.data: list[str] = []

    def feed(self, line: str) -> tuple[str, str] | None:
        if not line:
            if not self.data:
                self.event = None
                return None
            found = (self.event or "message", "\n".join(self.data))
            self.event, self.data = None, []
            return found
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self.event = value
        elif field == "data":
            self.data.append(value)
        return None


def _stream_error(data: str, request_id: str) -> ServingError:
    """The error an ``event: error`` carries (``{"detail", "request_id"}``)."""
    detail, said_id = _read_error_body(data.encode(), 500)
    kind = _kind(detail, _STREAM_FAILED)
    error = kind(detail)
    if kind is ServingError:
        error.status_code = 500
    error.retry_after = None
    error.request_id = said_id or request_id
    return error


def _broken_stream(exc: httpx.TransportError, shown: str, chunks: int, rid: str) -> ServingError:
    error: ServingError
    if isinstance(exc, httpx.TimeoutException):
        error = DeadlineExceeded(
            f"the stream from {shown} sent nothing for longer than the client's timeout "
            f"after {chunks} chunks"
        )
    else:
        error = UpstreamError(
            f"the stream from {shown} broke after {chunks} chunks ({type(exc).__name__}: {exc})"
        )
    error.retry_after = None
    error.request_id = rid
    return error


class ServiceClient(Generic[RequestT, ResponseT]):
    """A blocking client of one service. Make it with ``Embedder.client(url, ...)``.

    ``base_url``: where the service's router is (with its mount prefix, e.g.
    ``https://host/ml``). ``api_key``: sent as ``Authorization: Bearer``. ``timeout``:
    seconds per request (default: the service's ``request_timeout`` + 5; for a stream, the
    longest gap its config allows + 5). ``retry_for``: seconds from the start of a call
    during which a retry may start (0: never). ``retry_unsafe``: also retry answers and
    failures after which the input may have run (500, 502, 504, a broken connection).
    ``http_client``: an ``httpx.Client`` to send with (a test client, a proxy setup); it is
    not closed with this one, and ``base_url`` defaults to its own.
    """

    def __init__(
        self,
        server_cls: type[ModelServer[RequestT, ResponseT]],
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | None = None,
        retry_for: float = DEFAULT_RETRY_FOR,
        retry_unsafe: bool = False,
        headers: Mapping[str, str] | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        self._options = _options(
            server_cls,
            base_url,
            api_key=api_key,
            timeout=timeout,
            retry_for=retry_for,
            retry_unsafe=retry_unsafe,
            headers=headers,
            borrowed_base=None if http_client is None else http_client.base_url,
            owner="client",
        )
        self._owned = http_client is None
        self._http = (
            httpx.Client(timeout=_client_timeout(self._options), follow_redirects=True)
            if http_client is None
            else http_client
        )

    @property
    def url(self) -> str:
        """The predict route's URL."""
        return self._options.shown

    def predict(
        self, item: RequestT | Mapping[str, Any], *, request_id: str | None = None
    ) -> ResponseT:
        """Send ``item`` (the request model, or a dict of its fields); the response model."""
        return self.predict_reply(item, request_id=request_id).value

    def predict_reply(
        self, item: RequestT | Mapping[str, Any], *, request_id: str | None = None
    ) -> Reply[ResponseT]:
        """``predict``, with the request id and the number of attempts."""
        service = self._options.service
        service.require(streaming=False)
        body = service.encode(item)
        call = _Call(self._options, request_id, streaming=False)
        while True:
            try:
                response = self._http.send(call.request(self._http, body))
            except httpx.TransportError as exc:
                error = call.transport_error(exc)
                wait = call.wait_before_retry(error, sent=not _unsent(exc))
                if wait is None:
                    raise error from exc
                time.sleep(wait)
                continue
            rid = call.answered_id(response)
            if response.is_success:
                value = service.decode(response.content, self._options.shown, rid)
                return Reply(value, rid, call.attempts)
            error = call.answer_error(response, response.content)
            wait = call.wait_before_retry(error, sent=True)
            if wait is None:
                raise error
            time.sleep(wait)

    def stream(
        self, item: RequestT | Mapping[str, Any], *, request_id: str | None = None
    ) -> ChunkStream[ResponseT]:
        """The chunks of a streaming service's answer, as response models.

        The request is sent when the stream is entered or first iterated; use it in a
        ``with`` block so that the connection is closed if you stop early::

            with client.stream(item) as chunks:
                for chunk in chunks: ...
        """
        service = self._options.service
        service.require(streaming=True)
        body = service.encode(item)
        return ChunkStream(self, _Call(self._options, request_id, streaming=True), body)

    def close(self) -> None:
        """Close the connections (not those of a client passed as ``http_client``)."""
        if self._owned:
            self._http.close()

    def __enter__(self) -> ServiceClient[RequestT, ResponseT]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._options.service.name} {self.url}>"

    def _open(self, call: _Call, body: bytes) -> httpx.Response:
        while True:
            try:
                response = self._http.send(call.request(self._http, body), stream=True)
            except httpx.TransportError as exc:
                error = call.transport_error(exc)
                wait = call.wait_before_retry(error, sent=not _unsent(exc))
                if wait is None:
                    raise error from exc
                time.sleep(wait)
                continue
            if response.is_success:
                return response
            try:
                content = response.read()
            finally:
                response.close()
            error = call.answer_error(response, content)
            wait = call.wait_before_retry(error, sent=True)
            if wait is None:
                raise error
            time.sleep(wait)


class ChunkStream(Generic[ResponseT]):
    """The chunks of one streamed answer; ``request_id`` is known before the first one.

    An ``event: error`` after the first chunk raises the kit's error for its detail
    (``PredictError``, ``DeadlineExceeded``, ...), with the request id.
    """

    def __init__(self, client: ServiceClient[Any, ResponseT], call: _Call, body: bytes) -> None:
        self._client = client
        self._call = call
        self._body = body
        self._response: httpx.Response | None = None
        self._chunks: Generator[ResponseT, None, None] | None = None
        self.request_id = call.request_id
        self.count = 0  # chunks so far

    @property
    def attempts(self) -> int:
        return self._call.attempts

    def __enter__(self) -> ChunkStream[ResponseT]:
        self._start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[ResponseT]:
        return self

    def __next__(self) -> ResponseT:
        chunks = self._start()
        try:
            return next(chunks)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop reading: the connection is closed, and the server stops the stream."""
        if self._chunks is not None:
            self._chunks.close()
        if self._response is not None:
            self._response.close()

    def _start(self) -> Generator[ResponseT, None, None]:
        if self._chunks is None:
            self._response = self._client._open(self._call, self._body)
            self.request_id = self._call.answered_id(self._response)
            self._chunks = self._read(self._response)
        return self._chunks

    def _read(self, response: httpx.Response) -> Generator[ResponseT, None, None]:
        service, shown = self._client._options.service, self._client._options.shown
        parser = _SSE()
        try:
            for line in response.iter_lines():
                event = parser.feed(line)
                if event is None:
                    continue
                kind, data = event
                if kind == "error":
                    raise _stream_error(data, self.request_id)
                self.count += 1
                yield service.decode(data, shown, self.request_id)
        except httpx.TransportError as exc:
            raise _broken_stream(exc, shown, self.count, self.request_id) from exc


class AsyncServiceClient(Generic[RequestT, ResponseT]):
    """The ``asyncio`` twin of ``ServiceClient``: ``Embedder.async_client(url, ...)``; the
    same options, with an ``httpx.AsyncClient`` as ``http_client``."""

    def __init__(
        self,
        server_cls: type[ModelServer[RequestT, ResponseT]],
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | None = None,
        retry_for: float = DEFAULT_RETRY_FOR,
        retry_unsafe: bool = False,
        headers: Mapping[str, str] | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self._options = _options(
            server_cls,
            base_url,
            api_key=api_key,
            timeout=timeout,
            retry_for=retry_for,
            retry_unsafe=retry_unsafe,
            headers=headers,
            borrowed_base=None if http_client is None else http_client.base_url,
            owner="async_client",
        )
        self._owned = http_client is None
        self._http = (
            httpx.AsyncClient(timeout=_client_timeout(self._options), follow_redirects=True)
            if http_client is None
            else http_client
        )

    @property
    def url(self) -> str:
        """The predict route's URL."""
        return self._options.shown

    async def predict(
        self, item: RequestT | Mapping[str, Any], *, request_id: str | None = None
    ) -> ResponseT:
        """Send ``item`` (the request model, or a dict of its fields); the response model."""
        return (await self.predict_reply(item, request_id=request_id)).value

    async def predict_reply(
        self, item: RequestT | Mapping[str, Any], *, request_id: str | None = None
    ) -> Reply[ResponseT]:
        """``predict``, with the request id and the number of attempts."""
        service = self._options.service
        service.require(streaming=False)
        body = service.encode(item)
        call = _Call(self._options, request_id, streaming=False)
        while True:
            try:
                response = await self._http.send(call.request(self._http, body))
            except httpx.TransportError as exc:
                error = call.transport_error(exc)
                wait = call.wait_before_retry(error, sent=not _unsent(exc))
                if wait is None:
                    raise error from exc
                await asyncio.sleep(wait)
                continue
            rid = call.answered_id(response)
            if response.is_success:
                value = service.decode(response.content, self._options.shown, rid)
                return Reply(value, rid, call.attempts)
            error = call.answer_error(response, response.content)
            wait = call.wait_before_retry(error, sent=True)
            if wait is None:
                raise error
            await asyncio.sleep(wait)

    def stream(
        self, item: RequestT | Mapping[str, Any], *, request_id: str | None = None
    ) -> AsyncChunkStream[ResponseT]:
        """The chunks of a streaming service's answer; the request is sent when the stream
        is entered or first iterated::

            async with client.stream(item) as chunks:
                async for chunk in chunks: ...
        """
        service = self._options.service
        service.require(streaming=True)
        body = service.encode(item)
        return AsyncChunkStream(self, _Call(self._options, request_id, streaming=True), body)

    async def aclose(self) -> None:
        """Close the connections (not those of a client passed as ``http_client``)."""
        if self._owned:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncServiceClient[RequestT, ResponseT]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._options.service.name} {self.url}>"

    async def _open(self, call: _Call, body: bytes) -> httpx.Response:
        while True:
            try:
                response = await self._http.send(call.request(self._http, body), stream=True)
            except httpx.TransportError as exc:
                error = call.transport_error(exc)
                wait = call.wait_before_retry(error, sent=not _unsent(exc))
                if wait is None:
                    raise error from exc
                await asyncio.sleep(wait)
                continue
            if response.is_success:
                return response
            try:
                content = await response.aread()
            finally:
                await response.aclose()
            error = call.answer_error(response, content)
            wait = call.wait_before_retry(error, sent=True)
            if wait is None:
                raise error
            await asyncio.sleep(wait)


class AsyncChunkStream(Generic[ResponseT]):
    """The chunks of one streamed answer, for ``async for``; see ``ChunkStream``."""

    def __init__(
        self, client: AsyncServiceClient[Any, ResponseT], call: _Call, body: bytes
    ) -> None:
        self._client = client
        self._call = call
        self._body = body
        self._response: httpx.Response | None = None
        self._chunks: AsyncGenerator[ResponseT, None] | None = None
        self.request_id = call.request_id
        self.count = 0

    @property
    def attempts(self) -> int:
        return self._call.attempts

    async def __aenter__(self) -> AsyncChunkStream[ResponseT]:
        await self._start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> AsyncIterator[ResponseT]:
        return self

    async def __anext__(self) -> ResponseT:
        chunks = await self._start()
        try:
            return await chunks.__anext__()
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Stop reading: the connection is closed, and the server stops the stream."""
        if self._chunks is not None:
            await self._chunks.aclose()
        if self._response is not None:
            await self._response.aclose()

    async def _start(self) -> AsyncGenerator[ResponseT, None]:
        if self._chunks is None:
            self._response = await self._client._open(self._call, self._body)
            self.request_id = self._call.answered_id(self._response)
            self._chunks = self._read(self._response)
        return self._chunks

    async def _read(self, response: httpx.Response) -> AsyncGenerator[ResponseT, None]:
        service, shown = self._client._options.service, self._client._options.shown
        parser = _SSE()
        try:
            async for line in response.aiter_lines():
                event = parser.feed(line)
                if event is None:
                    continue
                kind, data = event
                if kind == "error":
                    raise _stream_error(data, self.request_id)
                self.count += 1
                yield service.decode(data, shown, self.request_id)
        except httpx.TransportError as exc:
            raise _broken_stream(exc, shown, self.count, self.request_id) from exc
