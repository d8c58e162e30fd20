"""``ChatServer``: OpenAI's ``POST /v1/chat/completions`` (streamed or not) and
``GET /v1/models`` over a generator of text pieces.

    @gpu_service(name="tiny-chat", gpu="L4")
    class TinyChat(ChatServer):
        model_id = "tiny-chat"

        def load(self) -> None: ...
        def generate(self, request: ChatRequest) -> Iterator[str]:
            ...  # yield one piece of text per generated token

The kit handles the protocol around the pieces: ``max_tokens`` / ``max_completion_tokens``
(it stops the generator and answers ``finish_reason="length"``), ``stop`` sequences (cut out
of the text, even across pieces, ``finish_reason="stop"``), ``stream`` with
``chat.completion.chunk`` events and ``data: [DONE]``, ``stream_options.include_usage``, and
``usage`` (completion tokens are the pieces yielded; prompt tokens come from
``count_prompt_tokens`` when defined, else 0). A client that disconnects closes the generator.
``temperature``, ``top_p`` and ``seed`` reach ``generate`` in the ``ChatRequest``; only ``n=1``
is served, and every request field this server does not support is refused with a 400.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar, Literal

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import Receive, Scope, Send

from .._core.spec import Api, RouteNames, ServiceSpec
from .._core.streams import ItemStream
from .._http.errors import REQUEST_ID_HEADER, request_id
from .._http.router import first_chunk, late_error, prepare_endpoint
from .._http.streaming import SSE_TYPE, close_on_disconnect
from .._http.waiting import ClientGone
from .._server import ModelServer
from ._errors import OpenAIError, OpenAIRoute, RequestError, openai_error_response
from ._models import add_model_routes, check_model, model_id

__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "ChatRequest",
    "ChatServer",
    "Completion",
    "Piece",
]

DEFAULT_MAX_TOKENS = 256
MAX_STOP_SEQUENCES = 4


# -- what the client sends -------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class MessageIn(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    """OpenAI's chat completion request, as far as this server serves it; any other field is
    refused (400), and so is a value of a listed field that it cannot honour."""

    model: str
    messages: list[MessageIn] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, description="only 1 is served")
    user: str | None = Field(default=None, description="accepted and not used")
    presence_penalty: float | None = Field(default=None, description="only 0 is served")
    frequency_penalty: float | None = Field(default=None, description="only 0 is served")
    logprobs: bool | None = Field(default=None, description="only false is served")
    response_format: dict[str, Any] | None = Field(
        default=None, description='only {"type": "text"} is served'
    )


# -- what the model sees -------------------------------------------------------------------


class ChatMessage(BaseModel):
    role: str
    content: str


class ChatRequest(BaseModel):
    """What ``generate`` gets: the conversation and the sampling parameters."""

    messages: list[ChatMessage]
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)


class Piece(BaseModel):
    """One piece of generated text; the first carries the prompt's token count."""

    text: str = ""
    prompt_tokens: int | None = None


class ChatServer(ModelServer[ChatRequest, Piece]):
    """Base class of an OpenAI-compatible chat service. Write ``generate`` (a generator,
    sync or async, yielding one piece of text per token); optionally ``count_prompt_tokens``.

    Class attributes: ``model_id`` (the id clients name; default the service name),
    ``default_max_tokens`` (256: the bound when a request sets none).
    """

    __mfk_api__: ClassVar[Api]
    model_id: ClassVar[str | None] = None
    default_max_tokens: ClassVar[int] = DEFAULT_MAX_TOKENS

    def generate(self, request: ChatRequest) -> Iterator[str]:
        """The answer's text, one piece per token."""
        raise NotImplementedError(f"{type(self).__name__} must define generate(self, request)")

    def count_prompt_tokens(self, request: ChatRequest) -> int | None:
        """Optional: the prompt's token count, reported as ``usage.prompt_tokens``."""
        return None

    def predict(self, item: ChatRequest) -> Iterator[Piece]:
        # The prompt's count rides on the first piece, so that the first chunk the router
        # waits for is real text: a failure before it is still a plain error response.
        counted = self.count_prompt_tokens(item)
        for text in self.generate(item):
            yield Piece(text=text, prompt_tokens=counted)
            counted = None
        if counted is not None:  # nothing generated: the count still reaches usage
            yield Piece(prompt_tokens=counted)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if inspect.isasyncgenfunction(cls.generate):  # an async generate: an async predict
            cls.predict = _predict_async  # type: ignore[method-assign,assignment]


async def _predict_async(self: Any, item: ChatRequest) -> AsyncIterator[Piece]:
    counted = self.count_prompt_tokens(item)
    if inspect.isawaitable(counted):
        counted = await counted
    async for text in self.generate(item):
        yield Piece(text=text, prompt_tokens=counted)
        counted = None
    if counted is not None:
        yield Piece(prompt_tokens=counted)


# -- turning pieces into a completion --------------------------------------------------------


class Completion:
    """The answer as the client gets it: stop sequences cut out (the end of the text is held
    back while a stop sequence may start there), at most ``max_tokens`` pieces, and why it
    finished."""

    def __init__(self, *, stop: list[str], max_tokens: int) -> None:
        self.stop = [s for s in stop if s]
        self.max_tokens = max_tokens
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.held = ""
        self.text: list[str] = []
        self.tokens = 0
        self.prompt_tokens = 0
        self.finish: Literal["stop", "length"] | None = None

    def feed(self, piece: Piece) -> str:
        """The text that may go to the client now; sets ``finish`` when the answer is done."""
        if piece.prompt_tokens is not None:
            self.prompt_tokens = piece.prompt_tokens
        if not piece.text or self.finish is not None:
            return ""
        self.tokens += 1
        buffered = self.held + piece.text
        cut = min((i for s in self.stop if (i := buffered.find(s)) >= 0), default=-1)
        if cut >= 0:
            self.finish = "stop"
            return self._emit(buffered[:cut])
        if self.tokens >= self.max_tokens:
            self.finish = "length"
            return self._emit(buffered)
        keep = self._may_start_a_stop(buffered)
        self.held = buffered[len(buffered) - keep :] if keep else ""
        return self._emit(buffered[: len(buffered) - keep])

    def _may_start_a_stop(self, text: str) -> int:
        """The length of the longest end of ``text`` that a stop sequence starts with."""
        for size in range(min(len(text), self.hold), 0, -1):
            if any(stop.startswith(text[-size:]) for stop in self.stop):
                return size
        return 0

    def end(self) -> str:
        """The generator ended: what was held back goes out, and it finished by itself."""
        if self.finish is None:
            self.finish = "stop"
            return self._emit(self.held)
        return ""

    def _emit(self, text: str) -> str:
        self.held = "" if self.finish else self.held
        if text:
            self.text.append(text)
        return text

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.tokens,
            "total_tokens": self.prompt_tokens + self.tokens,
        }


# -- the routes ------------------------------------------------------------------------------


class ChatApi:
    """The routes of a ``ChatServer``."""

    def route_paths(self, spec: ServiceSpec) -> list[str]:
        return ["POST /v1/chat/completions", "GET /v1/models"]

    def add_routes(
        self, router: Any, spec: ServiceSpec, backend: Any, dependencies: list[Any]
    ) -> RouteNames:
        config = spec.config
        served = model_id(spec)
        default_max: int = getattr(spec.server_cls, "default_max_tokens", DEFAULT_MAX_TOKENS)
        late = late_error("a first chunk", "first_chunk_timeout", config.first_chunk_seconds)

        async def completions(request: Request, body: ChatCompletionRequest) -> Response:
            rid = request_id(request)
            try:
                check_model(spec, body.model)
                item = _chat_request(body, default_max)
                deadline = asyncio.get_running_loop().time() + config.first_chunk_seconds
                stream, first = await first_chunk(backend, request, item, deadline, late)
            except ClientGone:
                return Response(status_code=499)  # the client is gone; nobody reads this
            except Exception as exc:
                return openai_error_response(exc, rid)
            answer = Completion(stop=item.stop, max_tokens=item.max_tokens)
            frame = _Frames(rid, served, include_usage=_include_usage(body))
            if body.stream:
                return ChatStream(stream, first, answer, frame, config.chunk_timeout)
            try:
                await _collect(stream, first, answer, request, config.chunk_timeout)
            except ClientGone:
                return Response(status_code=499)
            except Exception as exc:
                return openai_error_response(exc, rid)
            return JSONResponse(frame.completion(answer), headers={REQUEST_ID_HEADER: rid})

        name = f"{config.name}.chat"
        prepare_endpoint(completions, spec)
        router.add_api_route(
            "/v1/chat/completions",
            completions,
            methods=["POST"],
            name=name,
            summary=f"{spec.name}: chat completion (streamed with stream=true)",
            tags=[spec.name],
            responses={
                200: {
                    "description": "A chat.completion, or with stream=true a text/event-stream "
                    "of chat.completion.chunk events ending with data: [DONE]",
                    "content": {SSE_TYPE: {}},
                },
                **{code: {"model": OpenAIError} for code in (400, 401, 404, 422, 500, 503)},
            },
            dependencies=dependencies,
            route_class_override=OpenAIRoute,
        )
        shared = add_model_routes(router, spec, backend, dependencies)
        return RouteNames(exclusive=(name,), shared=shared)


ChatServer.__mfk_api__ = ChatApi()


def _chat_request(body: ChatCompletionRequest, default_max: int) -> ChatRequest:
    _refuse_unless(body.n in (None, 1), "n", f"n={body.n} is not supported: only n=1 is served")
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(body, name)
        _refuse_unless(value in (None, 0), name, f"{name}={value} is not supported: only 0")
    _refuse_unless(not body.logprobs, "logprobs", "logprobs=true is not supported")
    _refuse_unless(
        body.response_format in (None, {"type": "text"}),
        "response_format",
        f"response_format={body.response_format} is not supported: only {{'type': 'text'}}",
    )
    _refuse_unless(
        body.stream_options is None or body.stream,
        "stream_options",
        "stream_options is only allowed with stream=true",
    )
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    _refuse_unless(
        len(stop) <= MAX_STOP_SEQUENCES,
        "stop",
        f"stop has {len(stop)} sequences; at most {MAX_STOP_SEQUENCES}",
    )
    return ChatRequest(
        messages=[ChatMessage(role=m.role, content=_text(m.content)) for m in body.messages],
        max_tokens=body.max_completion_tokens or body.max_tokens or default_max,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=stop,
    )


def _refuse_unless(ok: bool, param: str, message: str) -> None:
    if not ok:
        raise RequestError(message, param=param, code="unsupported_value")


def _text(content: str | list[TextPart] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(part.text for part in content)


def _include_usage(body: ChatCompletionRequest) -> bool:
    return body.stream_options is not None and body.stream_options.include_usage


async def _collect(
    stream: ItemStream, first: Piece | None, answer: Completion, request: Request, gap: float
) -> None:
    """Read the whole answer (not streamed), stopping the generator once it is complete."""
    watcher = asyncio.get_running_loop().create_task(close_on_disconnect(request.receive, stream))
    try:
        piece = first
        while piece is not None:
            answer.feed(piece)
            if answer.finish is not None:
                return
            try:
                piece = await stream.next(gap)
            except StopAsyncIteration:
                if watcher.done():
                    raise ClientGone from None
                piece = None
        answer.end()
    finally:
        watcher.cancel()
        stream.close()


class _Frames:
    """The JSON of one response's chunks and completion."""

    def __init__(self, rid: str, model: str, *, include_usage: bool) -> None:
        self.request_id = rid
        self.id = f"chatcmpl-{rid}"
        self.model = model
        self.created = int(time.time())
        self.include_usage = include_usage

    def chunk(self, delta: dict[str, str], finish: str | None = None) -> bytes:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        if self.include_usage:
            body["usage"] = None
        return _event(body)

    def usage(self, answer: Completion) -> bytes:
        return _event(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": answer.usage(),
            }
        )

    def completion(self, answer: Completion) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(answer.text)},
                    "finish_reason": answer.finish,
                    "logprobs": None,
                }
            ],
            "usage": answer.usage(),
        }


def _event(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


class ChatStream(Response):
    """``chat.completion.chunk`` events as the pieces come: the role first, then the text,
    then the finish reason, the usage when asked for, and ``data: [DONE]``. A failure after
    the first event is an event ``{"error": {...}}`` (which the official clients raise)."""

    def __init__(
        self,
        stream: ItemStream,
        first: Piece | None,
        answer: Completion,
        frames: _Frames,
        gap: float,
    ) -> None:
        # Not Response.__init__: it would declare a Content-Length for the empty body.
        self.status_code = 200
        self.media_type = SSE_TYPE
        self.background = None
        self.init_headers(
            {
                REQUEST_ID_HEADER: frames.request_id,
                "cache-control": "no-cache",
                "x-accel-buffering": "no",
            }
        )
        self.stream, self.first, self.answer, self.frames, self.gap = (
            stream,
            first,
            answer,
            frames,
            gap,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream, answer, frames = self.stream, self.answer, self.frames
        watcher = asyncio.get_running_loop().create_task(close_on_disconnect(receive, stream))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await _body(send, frames.chunk({"role": "assistant", "content": ""}))
            piece = self.first
            while piece is not None and answer.finish is None:
                if text := answer.feed(piece):
                    await _body(send, frames.chunk({"content": text}))
                if answer.finish is not None:
                    break
                try:
                    piece = await stream.next(self.gap)
                except StopAsyncIteration:
                    piece = None
            if watcher.done():
                return  # the client left
            if answer.finish is None and (text := answer.end()):
                await _body(send, frames.chunk({"content": text}))
            await _body(send, frames.chunk({}, answer.finish))
            if frames.include_usage:
                await _body(send, frames.usage(answer))
            await send({"type": "http.response.body", "body": DONE, "more_body": False})
        except Exception as exc:  # a failure mid-stream: an error event, then the end
            if not watcher.done():
                error = openai_error_response(exc, frames.request_id).body
                with contextlib.suppress(Exception):
                    event = b"data: " + bytes(error) + b"\n\n"
                    await send({"type": "http.response.body", "body": event, "more_body": False})
        finally:
            watcher.cancel()
            stream.close()


async def _body(send: Send, data: bytes) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": True})
