"""The shapes of a transcription: the multipart form the client sends (strict), what
``transcribe`` gets per file (``TranscriptionRequest``) and returns (``Transcript``, its
``Segment`` s and ``Word`` s), and OpenAI's JSON answers (``json`` and ``verbose_json``)."""

from __future__ import annotations

from typing import Literal

from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Field

from .._file import File

__all__ = [
    "ResponseFormat",
    "Segment",
    "Transcript",
    "TranscriptionForm",
    "TranscriptionJson",
    "TranscriptionRequest",
    "VerboseSegment",
    "VerboseTranscription",
    "Word",
]

ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]
Granularity = Literal["segment", "word"]

# -- what the client sends -------------------------------------------------------------------


class TranscriptionForm(BaseModel):
    """OpenAI's transcription request (``multipart/form-data``), as far as this server serves
    it; any other field is refused (400), and so is a value it cannot honour."""

    model_config = ConfigDict(extra="forbid")

    file: UploadFile = Field(description="The audio file")
    model: str
    language: str | None = Field(default=None, description="ISO-639-1 code, e.g. 'en'")
    prompt: str | None = None
    response_format: ResponseFormat = "json"
    temperature: float = Field(default=0.0, ge=0, le=1)
    timestamp_granularities: list[Granularity] | None = Field(
        default=None,
        alias="timestamp_granularities[]",
        description="with response_format=verbose_json only; 'word' where the model says so",
    )
    stream: bool | None = Field(default=None, description="only false is served")


# -- what the model sees and returns ------------------------------------------------------------


class TranscriptionRequest(BaseModel):
    """One audio file to transcribe and the options it came with: what ``transcribe`` gets.

    ``word_timestamps`` is set when the client asked for word timestamps (only on a server
    whose class says ``word_timestamps = True``).
    """

    file: File
    language: str | None = None
    prompt: str | None = None
    temperature: float = 0.0
    word_timestamps: bool = False


class Segment(BaseModel):
    """A stretch of the audio and its text; times in seconds from the start of the file.

    ``tokens``, ``avg_logprob`` and ``no_speech_prob`` are reported in ``verbose_json`` as
    given (a model that has none leaves them out)."""

    start: float = Field(ge=0)
    end: float = Field(ge=0)
    text: str
    tokens: list[int] = Field(default_factory=list)
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0


class Word(BaseModel):
    """One word and when it was said, in seconds."""

    word: str
    start: float = Field(ge=0)
    end: float = Field(ge=0)


class Transcript(BaseModel):
    """What ``transcribe`` returns for one file: the text, and where it has them, its
    segments, its words, the language it heard and the audio's length in seconds.

    ``duration`` defaults to the end of the last segment; ``language`` to the request's.
    """

    text: str
    segments: list[Segment] = Field(default_factory=list)
    words: list[Word] = Field(default_factory=list)
    language: str | None = None
    duration: float | None = Field(default=None, ge=0)


# -- what the client gets --------------------------------------------------------------------


class TranscriptionJson(BaseModel):
    """``response_format=json``."""

    text: str


class VerboseSegment(BaseModel):
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


class VerboseWord(BaseModel):
    word: str
    start: float
    end: float


class VerboseTranscription(BaseModel):
    """``response_format=verbose_json``: ``segments`` unless only word timestamps were asked
    for, ``words`` when they were."""

    task: Literal["transcribe"] = "transcribe"
    language: str
    duration: float
    text: str
    segments: list[VerboseSegment] | None = None
    words: list[VerboseWord] | None = None
