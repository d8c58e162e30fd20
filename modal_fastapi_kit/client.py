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

Files: an item whose ``File`` fields hold files is sent as ``multipart/form-data``, a file
from disk (``File.from_path``) streamed from it rather than read into memory; any other item
as JSON. A service declared ``ModelServer[In, File]`` answers a ``File`` (its bytes, type and
name; kept on disk past 8 MiB).

Retries, within ``retry_for`` seconds from the start of a call, follow the error's ``code``
(``modal_fastapi_kit.exceptions.ERROR_CODES``):

- an answer whose input was not run (loading, queue full, stalled, shutting down: 503 or
  429), after its ``Retry-After``, else after a short backoff; never the 503 of a model that
  failed to load, since waiting changes nothing;
- a connection that could not be made (nothing was sent).

A call that may have run (the connection broke after the request was sent, a timeout, a 500,
502 or 504) is retried only with ``retry_unsafe=True``. Failures raise the exceptions of
``modal_fastapi_kit.exceptions``, with ``status_code``, ``code``, ``detail`` and
``request_id``.

A call on Modal that runs past 150 s is answered with a ``303 See Other`` to its result URL;
the client follows it (a ``GET`` with the same headers, the API key included, and no body: it
starts nothing new) for as long as ``timeout`` allows, then raises ``DeadlineExceeded``.

Jobs (a service with ``@gpu_service(jobs=True)``): ``submit(item)`` answers a ``JobHandle``
at once (``status()``, ``result(timeout)``, ``cancel()``), and ``job(id)`` finds one again::

    job = client.submit(EmbedIn(text="hello"))
    vector = job.result(timeout=600).embedding

This module imports neither FastAPI, Starlette nor the server: a script that only calls a
service pays for ``httpx`` and ``pydantic``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, cast

import httpx

from ._client.answers import error_from_answer
from ._client.attempts import Attempts
from ._client.files import aread_file_answer, read_file_answer
from ._client.jobs import AsyncJobHandle, JobHandle, read_status, submission
from ._client.options import DEFAULT_RETRY_FOR, ClientArgs, ClientOptions
from ._client.redirects import Hops, budget_of
from ._client.stream import ChunkReader
from ._jobs.status import JobState, JobStatus
from ._protocol import RequestT, ResponseT

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "DEFAULT_RETRY_FOR",
    "AsyncChunkStream",
    "AsyncJobHandle",
    "AsyncServiceClient",
    "ChunkStream",
    "ClientArgs",
    "JobHandle",
    "JobState",
    "JobStatus",
    "Reply",
    "ServiceClient",
    "error_from_answer",
]


@dataclass(frozen=True)
class Reply(Generic[ResponseT]):
    """An answer with what came with it: ``value`` is the response model (or the ``File``),
    ``request_id`` the id the server answered under, ``attempts`` how many requests it took
    (retries + 1)."""

    value: ResponseT
    request_id: str
    attempts: int


class _Client(Generic[RequestT, ResponseT]):
    """What both clients share: the checked options and the request a call starts with."""

    _options: ClientOptions

    @property
    def url(self) -> str:
        """The predict route's URL."""
        return self._options.shown

    def _call(
        self, item: RequestT | Mapping[str, Any], request_id: str | None, *, streaming: bool
    ) -> Attempts:
        service = self._options.service
        service.require(streaming=streaming)
        body = service.encode(item)
        return Attempts(self._options, request_id, body, streaming=streaming)

    def _reply(self, call: Attempts, response: httpx.Response) -> Reply[ResponseT]:
        rid = call.answered_id(response)
        value = self._options.service.decode(response.content, self._options.shown, rid)
        return Reply(cast("ResponseT", value), rid, call.attempts)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._options.service.name} {self.url}>"


class ServiceClient(_Client[RequestT, ResponseT]):
    """A blocking client of one service. Make it with ``Embedder.client(url, ...)``.

    ``base_url``: where the service's router is (with its mount prefix, e.g.
    ``https://host/ml``). The options (``api_key``, ``timeout``, ``retry_for``,
    ``retry_unsafe``, ``headers``) are those of ``ClientArgs``. ``http_client``: an
    ``httpx.Client`` to send with (a test client, a proxy setup); it is not closed with this
    one, and ``base_url`` defaults to its own.
    """

    def __init__(
        self,
        server_cls: type[Any],
        base_url: str | None = None,
        *,
        http_client: httpx.Client | None = None,
        **options: Unpack[ClientArgs],
    ) -> None:
        borrowed = None if http_client is None else str(http_client.base_url)
        self._options = ClientOptions.resolve(
            server_cls, base_url, options, borrowed_base=borrowed or None, owner="client"
        )
        self._owned = http_client is None
        self._http = http_client or httpx.Client(timeout=_timeout(self._options))

    def predict(
        self, item: RequestT | Mapping[str, Any], *, request_id: str | None = None
    ) -> ResponseT:
        """Send ``item`` (the request model, or a dict of its fields); the response model, or
        a ``File`` for a service that answers one."""
        return self.predict_reply(item, request_id=request_id).value

    def predict_reply(
        self, item: RequestT | Mapping[str, Any], *, request_id: str | None = None
    ) -> Reply[ResponseT]:
        """``predict``, with the request id and the number of attempts."""
        call = self._call(item, request_id, streaming=False)
        try:
            if self._options.service.answers_file:
                return self._read_file(call)
            return self._reply(call, self._send(call, stream=False))
        finally:
            call.body.close()

    def stream(
        self, item: RequestT | Mapping[str, Any], *, request_id: str | None = None
    ) -> ChunkStream[ResponseT]:
        """The chunks of a streaming service's answer, as response models.

        The request is sent when the stream is entered or first iterated; use it in a
        ``with`` block so that the connection is closed if you stop early::

            with client.stream(item) as chunks:
                for chunk in chunks: ...
        """
        return ChunkStream(self, self._call(item, request_id, streaming=True))

    def submit(
        self,
        item: RequestT | Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        webhook: str | None = None,
        request_id: str | None = None,
    ) -> JobHandle[ResponseT]:
        """Submit ``item`` as a job (``POST <route>/jobs``, the body ``predict`` sends) and
        return its handle once the service took it (202).

        ``idempotency_key``: names the job, so that a submission sent again (by you, or by a
        retry) answers the job it made; one is made per call when none is given.
        ``webhook``: a URL the service calls when the job ends (``Webhook-URL``).
        """
        call = submission(
            self._options,
            item,
            idempotency_key=idempotency_key,
            webhook=webhook,
            request_id=request_id,
        )
        try:
            response = self._send(call, stream=False)
        finally:
            call.body.close()
        status = read_status(response, call)
        return JobHandle(self, status.id, status)

    def job(self, job_id: str) -> JobHandle[ResponseT]:
        """The handle of the job ``job_id`` (submitted with the same API key); nothing is
        sent until it is used."""
        return JobHandle(self, job_id)

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

    def _send(self, call: Attempts, *, stream: bool) -> httpx.Response:
        """Send until a success (returned; open when ``stream``) or the call is over; a
        Modal 303 is followed (``_client/redirects.py``)."""
        while True:
            hops = Hops(call, budget_of(call, self._http), started=time.monotonic())
            try:
                response = self._http.send(
                    call.request(self._http), stream=stream, follow_redirects=False
                )
            except httpx.TransportError as exc:
                time.sleep(call.after_transport_error(exc))
                continue
            response = self._follow(hops, response, stream=stream)
            if response.is_success:
                return response
            try:
                content = response.read()
            finally:
                response.close()
            time.sleep(call.after_answer(response, content))

    def _follow(self, hops: Hops, response: httpx.Response, *, stream: bool) -> httpx.Response:
        """``response``, or the answer at the end of its chain of 303 s."""
        while True:
            try:
                request = hops.next(response)
            except BaseException:
                response.close()
                raise
            if request is None:
                return response
            response.close()
            while True:
                try:
                    response = self._http.send(
                        request, stream=stream, follow_redirects=False, auth=None
                    )
                    break
                except httpx.TransportError as exc:
                    time.sleep(hops.after_error(request, exc))
            hops.answered()

    def _read_file(self, call: Attempts) -> Reply[ResponseT]:
        """A file answer's body into a ``File``; a body that breaks off is a failure of the
        call, retried as a broken connection is."""
        while True:
            response = self._send(call, stream=True)
            try:
                file = cast("ResponseT", read_file_answer(response))
            except httpx.TransportError as exc:
                time.sleep(call.after_transport_error(exc))
                continue
            return Reply(file, call.answered_id(response), call.attempts)


class AsyncServiceClient(_Client[RequestT, ResponseT]):
    """The ``asyncio`` twin of ``ServiceClient``: ``Embedder.async_client(url, ...)``; the
    same options, with an ``httpx.AsyncClient`` as ``http_client``."""

    def __init__(
        self,
        server_cls: type[Any],
        base_url: str | None = None,
        *,
        http_client: httpx.AsyncClient | None = None,
        **options: Unpack[ClientArgs],
    ) -> None:
        borrowed = None if http_client is None else str(http_client.base_url)
        self._options = ClientOptions.resolve(
            server_cls, base_url, options, borrowed_base=borrowed or None, owner="async_client"
        )
        self._owned = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=_timeout(self._options))

    async def predict(
        self, item: RequestT | Mapping[str, Any], *, request_id: str | None = None
    ) -> ResponseT:
        """Send ``item`` (the request model, or a dict of its fields); the response model, or
        a ``File`` for a service that answers one."""
        return (await self.predict_reply(item, request_id=request_id)).value

    async def predict_reply(
        self, item: RequestT | Mapping[str, Any], *, request_id: str | None = None
    ) -> Reply[ResponseT]:
        """``predict``, with the request id and the number of attempts."""
        call = self._call(item, request_id, streaming=False)
        try:
            if self._options.service.answers_file:
                return await self._read_file(call)
            return self._reply(call, await self._send(call, stream=False))
        finally:
            call.body.close()

    def stream(
        self, item: RequestT | Mapping[str, Any], *, request_id: str | None = None
    ) -> AsyncChunkStream[ResponseT]:
        """The chunks of a streaming service's answer; the request is sent when the stream
        is entered or first iterated::

            async with client.stream(item) as chunks:
                async for chunk in chunks: ...
        """
        return AsyncChunkStream(self, self._call(item, request_id, streaming=True))

    async def submit(
        self,
        item: RequestT | Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        webhook: str | None = None,
        request_id: str | None = None,
    ) -> AsyncJobHandle[ResponseT]:
        """``ServiceClient.submit``, awaited; the handle's methods are awaited too."""
        call = submission(
            self._options,
            item,
            idempotency_key=idempotency_key,
            webhook=webhook,
            request_id=request_id,
        )
        try:
            response = await self._send(call, stream=False)
        finally:
            call.body.close()
        status = read_status(response, call)
        return AsyncJobHandle(self, status.id, status)

    def job(self, job_id: str) -> AsyncJobHandle[ResponseT]:
        """``ServiceClient.job``: a handle, nothing sent until it is used."""
        return AsyncJobHandle(self, job_id)

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

    async def _send(self, call: Attempts, *, stream: bool) -> httpx.Response:
        """``ServiceClient._send``, awaited."""
        while True:
            hops = Hops(call, budget_of(call, self._http), started=time.monotonic())
            try:
                response = await self._http.send(
                    call.request(self._http), stream=stream, follow_redirects=False
                )
            except httpx.TransportError as exc:
                await asyncio.sleep(call.after_transport_error(exc))
                continue
            response = await self._follow(hops, response, stream=stream)
            if response.is_success:
                return response
            try:
                content = await response.aread()
            finally:
                await response.aclose()
            await asyncio.sleep(call.after_answer(response, content))

    async def _follow(
        self, hops: Hops, response: httpx.Response, *, stream: bool
    ) -> httpx.Response:
        """``ServiceClient._follow``, awaited."""
        while True:
            try:
                request = hops.next(response)
            except BaseException:
                await response.aclose()
                raise
            if request is None:
                return response
            await response.aclose()
            while True:
                try:
                    response = await self._http.send(
                        request, stream=stream, follow_redirects=False, auth=None
                    )
                    break
                except httpx.TransportError as exc:
                    await asyncio.sleep(hops.after_error(request, exc))
            hops.answered()

    async def _read_file(self, call: Attempts) -> Reply[ResponseT]:
        """``ServiceClient._read_file``, awaited."""
        while True:
            response = await self._send(call, stream=True)
            try:
                file = cast("ResponseT", await aread_file_answer(response))
            except httpx.TransportError as exc:
                await asyncio.sleep(call.after_transport_error(exc))
                continue
            return Reply(file, call.answered_id(response), call.attempts)


def _timeout(options: ClientOptions) -> httpx.Timeout:
    seconds = options.default_timeout
    return httpx.Timeout(seconds, connect=min(seconds, 10.0))


class _Stream:
    """What both streams share: the call, its request id, and the chunks read so far."""

    def __init__(self, call: Attempts) -> None:
        self._call = call
        self._response: httpx.Response | None = None
        self._reader: ChunkReader | None = None
        self.request_id = call.request_id

    @property
    def attempts(self) -> int:
        """Requests sent so far (retries + 1)."""
        return self._call.attempts

    @property
    def count(self) -> int:
        """Chunks read so far."""
        return 0 if self._reader is None else self._reader.count

    def _begin(self, response: httpx.Response, options: ClientOptions) -> ChunkReader:
        self._response = response
        self.request_id = self._call.answered_id(response)
        self._reader = ChunkReader(options.service, options.shown, self.request_id)
        return self._reader


class ChunkStream(_Stream, Generic[ResponseT]):
    """The chunks of one streamed answer; ``request_id`` is known before the first one.

    An ``event: error`` after the first chunk raises the kit's error for its ``code``
    (``PredictError``, ``DeadlineExceeded``, ...), with the request id.
    """

    def __init__(self, client: ServiceClient[Any, ResponseT], call: Attempts) -> None:
        super().__init__(call)
        self._client = client
        self._chunks: Generator[ResponseT, None, None] | None = None

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
            try:  # the body is sent whole before the answer's head arrives
                response = self._client._send(self._call, stream=True)
            finally:
                self._call.body.close()
            self._chunks = self._read(response, self._begin(response, self._client._options))
        return self._chunks

    @staticmethod
    def _read(response: httpx.Response, reader: ChunkReader) -> Generator[ResponseT, None, None]:
        try:
            for line in response.iter_lines():
                chunk = reader.feed(line)
                if chunk is not None:
                    yield cast("ResponseT", chunk)
        except httpx.TransportError as exc:
            raise reader.broken(exc) from exc


class AsyncChunkStream(_Stream, Generic[ResponseT]):
    """The chunks of one streamed answer, for ``async for``; see ``ChunkStream``."""

    def __init__(self, client: AsyncServiceClient[Any, ResponseT], call: Attempts) -> None:
        super().__init__(call)
        self._client = client
        self._chunks: AsyncGenerator[ResponseT, None] | None = None

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
            try:  # the body is sent whole before the answer's head arrives
                response = await self._client._send(self._call, stream=True)
            finally:
                self._call.body.close()
            self._chunks = self._read(response, self._begin(response, self._client._options))
        return self._chunks

    @staticmethod
    async def _read(
        response: httpx.Response, reader: ChunkReader
    ) -> AsyncGenerator[ResponseT, None]:
        try:
            async for line in response.aiter_lines():
                chunk = reader.feed(line)
                if chunk is not None:
                    yield cast("ResponseT", chunk)
        except httpx.TransportError as exc:
            raise reader.broken(exc) from exc
