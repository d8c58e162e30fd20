"""``ChatServer``: OpenAI's ``POST /v1/chat/completions`` (streamed or not) and
``GET /v1/models`` over text pieces, generated one request at a time or decoded in batches.

    @gpu_service(name="tiny-chat", gpu="L4")
    class TinyChat(ChatServer):
        model_id = "tiny-chat"

        def load(self) -> None: ...
        def generate(self, request: ChatRequest) -> Iterator[str]:
            ...  # yield one piece of text per generated token

The batched form decodes concurrent chats together instead: define ``join(requests)`` (add
chats to the batch: the prefill), ``step()`` (one token for every chat in it: per key a piece
of text, ``END`` when that chat is done) and ``leave(keys)`` (drop chats that ended or whose
client left); a chat that arrives while others are decoding joins them at the next step.
``examples/chat.py`` is written this way; ``_chat_steps`` says what the kit adds around it.

The kit handles the protocol around the pieces: ``max_tokens`` / ``max_completion_tokens``
(it stops the generator, or has the chat leave the batch, and answers
``finish_reason="length"``), ``stop`` sequences (cut out of the text, even across pieces,
``finish_reason="stop"``), ``stream`` with ``chat.completion.chunk`` events and
``data: [DONE]``, ``stream_options.include_usage``, and ``usage`` (completion tokens are the
pieces; prompt tokens come from ``count_prompt_tokens`` when defined, else 0). A client that
disconnects closes the generator (or its chat leaves the batch). ``temperature``, ``top_p``
and ``seed`` reach the model in the ``ChatRequest``; only ``n=1`` is served, and every request
field this server does not support is refused with a 400.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from .._core.spec import Api, RouteNames, ServiceSpec
from .._http.endpoint import late_error, prepare_endpoint
from .._http.errors import REQUEST_ID_HEADER, request_id
from .._http.router import first_chunk
from .._http.streaming import SSE_TYPE
from .._http.waiting import ClientGone
from .._server import ModelServer
from ._chat_completion import ChatStream, Completion, chat_request, collect, include_usage
from ._chat_schemas import ChatCompletionRequest, ChatFrames, ChatMessage, ChatRequest, Piece
from ._chat_steps import wrap_chat_steps
from ._errors import OpenAIError, OpenAIRoute, openai_error_response
from ._models import add_model_routes, check_model, model_id

__all__ = ["ChatMessage", "ChatRequest", "ChatServer"]

DEFAULT_MAX_TOKENS = 256


class ChatServer(ModelServer[ChatRequest, Piece]):
    """Base class of an OpenAI-compatible chat service. Write ``generate`` (a generator,
    sync or async, yielding one piece of text per token), or the batched form ``join``,
    ``step`` and ``leave`` (concurrent chats share model steps); optionally
    ``count_prompt_tokens``.

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
        wrap_chat_steps(cls)  # the batched form: text pieces become Pieces with the count


async def _predict_async(self: Any, item: ChatRequest) -> AsyncIterator[Piece]:
    counted = self.count_prompt_tokens(item)
    if inspect.isawaitable(counted):
        counted = await counted
    async for text in self.generate(item):
        yield Piece(text=text, prompt_tokens=counted)
        counted = None
    if counted is not None:
        yield Piece(prompt_tokens=counted)


# -- the routes ----------------------------------------------------------------------------


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
                item = chat_request(body, default_max)
                deadline = asyncio.get_running_loop().time() + config.first_chunk_seconds
                stream, first = await first_chunk(backend, request, item, deadline, late)
            except ClientGone:
                return Response(status_code=499)  # the client is gone; nobody reads this
            except Exception as exc:
                return openai_error_response(exc, rid)
            answer = Completion(stop=item.stop, max_tokens=item.max_tokens)
            frames = ChatFrames(rid, served, include_usage=include_usage(body))
            if body.stream:
                return ChatStream(stream, first, answer, frames, config.chunk_timeout)
            try:
                await collect(stream, first, answer, request, config.chunk_timeout)
            except ClientGone:
                return Response(status_code=499)
            except Exception as exc:
                return openai_error_response(exc, rid)
            completion = frames.completion("".join(answer.text), answer.finish, answer.usage())
            return JSONResponse(completion, headers={REQUEST_ID_HEADER: rid})

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
