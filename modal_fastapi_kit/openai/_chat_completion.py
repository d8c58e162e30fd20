"""The protocol around the pieces ``generate`` yields: the request as ``generate`` sees it
(refusing what cannot be honoured), and the pieces turned into a completion (``collect``)
or into ``chat.completion.chunk`` events (``ChatStream``), with ``max_tokens``, ``stop``
sequences and ``usage`` handled by ``Completion``."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import Request

from .._core.streams import ItemStream
from .._http.streaming import SSE_TYPE, ChunkStream, close_on_disconnect
from .._http.waiting import ClientGone
from ._chat_schemas import (
    DONE,
    ChatCompletionRequest,
    ChatFrames,
    ChatMessage,
    ChatRequest,
    Piece,
    TextPart,
    event,
)
from ._errors import RequestError, openai_error_response

__all__ = ["ChatStream", "Completion", "chat_request", "collect", "include_usage"]

MAX_STOP_SEQUENCES = 4


# -- the request -----------------------------------------------------------------------------


def chat_request(body: ChatCompletionRequest, default_max: int) -> ChatRequest:
    """What ``generate`` gets for ``body``; a value this server cannot honour is a 400."""
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


def include_usage(body: ChatCompletionRequest) -> bool:
    """Whether a streamed answer ends with a usage chunk."""
    return body.stream_options is not None and body.stream_options.include_usage


def _refuse_unless(ok: bool, param: str, message: str) -> None:
    if not ok:
        raise RequestError(message, param=param, code="unsupported_value")


def _text(content: str | list[TextPart] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(part.text for part in content)


# -- the pieces ------------------------------------------------------------------------------


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


async def collect(
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


class ChatStream(ChunkStream):
    """``chat.completion.chunk`` events as the pieces come: the role first, then the text,
    then the finish reason, the usage when asked for, and ``data: [DONE]``. A failure after
    the first event is an event ``{"error": {...}}`` (which the official clients raise)."""

    def __init__(
        self,
        stream: ItemStream,
        first: Piece | None,
        answer: Completion,
        frames: ChatFrames,
        gap: float,
    ) -> None:
        super().__init__(
            stream, first, request_id=frames.request_id, chunk_timeout=gap, media_type=SSE_TYPE
        )
        self.answer = answer
        self.frames = frames

    def opening(self) -> bytes:
        return self.frames.chunk({"role": "assistant", "content": ""})

    def frame(self, chunk: Piece) -> bytes:
        text = self.answer.feed(chunk)
        return self.frames.chunk({"content": text}) if text else b""

    @property
    def done(self) -> bool:
        return self.answer.finish is not None  # max_tokens or a stop sequence reached

    def closing(self) -> bytes:
        answer, frames = self.answer, self.frames
        held = answer.end()
        data = frames.chunk({"content": held}) if held else b""
        data += frames.chunk({}, answer.finish)
        if frames.include_usage:
            data += frames.usage(answer.usage())
        return data + DONE

    def error_frame(self, error: BaseException) -> bytes:
        return event(bytes(openai_error_response(error, self.request_id).body))
