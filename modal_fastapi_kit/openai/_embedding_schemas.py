"""The shapes of an embeddings call: the request the client sends (strict), the item the
kit's batcher and the model see per input (``TextItem``) and what comes back per input
(``Vector``), and OpenAI's response."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "EmbeddingData",
    "EmbeddingRequest",
    "EmbeddingResponse",
    "EmbeddingUsage",
    "Input",
    "TextItem",
    "Vector",
]

# What OpenAI's `input` may be: a text, texts, token ids, lists of token ids.
Input = str | list[str] | list[int] | list[list[int]]


class TextItem(BaseModel):
    """One input text: what the kit's batcher and the model see."""

    text: str


class Vector(BaseModel):
    """One input's vector and its token count."""

    embedding: list[float]
    tokens: int = 0


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request; fields OpenAI does not define are refused (400)."""

    model_config = ConfigDict(extra="forbid")

    input: Input
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = Field(default=None, description="accepted and not used")


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage
