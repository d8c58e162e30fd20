"""The shapes of a chat completion: the request the client sends (validated, strict), what
``generate`` gets (``ChatRequest``) and yields through the runtime (``Piece``), and the JSON
the client gets back (``ChatFrames``: a ``chat.completion``, its ``chat.completion.chunk``
events and ``data: [DONE]``)."""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DONE",
    "ChatCompletionRequest",
    "ChatFrames",
    "ChatMessage",
    "ChatRequest",
    "MessageIn",
    "Piece",
    "StreamOptions",
    "TextPart",
    "event",
]

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


# -- what the client gets ------------------------------------------------------------------

DONE = b"data: [DONE]\n\n"


class ChatFrames:
    """The JSON of one response's chunks and completion (built directly: one ``json.dumps``
    per chunk, no model validation on the way out)."""

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
        return event(body)

    def usage(self, usage: dict[str, int]) -> bytes:
        return event(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage,
            }
        )

    def completion(self, text: str, finish: str | None, usage: dict[str, int]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                    "logprobs": None,
                }
            ],
            "usage": usage,
        }


def event(body: dict[str, Any] | bytes) -> bytes:
    """One server-sent event: ``data: <JSON>`` and a blank line."""
    data = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    return b"data: " + data + b"\n\n"
