"""OpenAI-compatible services on the kit's core: write how a model embeds texts, generates
text or transcribes audio, get the routes the official clients call.

- ``EmbeddingServer``: ``POST /v1/embeddings``, ``GET /v1/models``.
- ``ChatServer``: ``POST /v1/chat/completions`` (streamed or not), ``GET /v1/models``.
- ``TranscriptionServer``: ``POST /v1/audio/transcriptions`` (``json``, ``text``, ``srt``,
  ``vtt``, ``verbose_json``), ``GET /v1/models``.

Errors are OpenAI's ``{"error": {"message", "type", "param", "code"}}``; request fields this
server does not support are refused with a 400 naming them, never ignored.
"""

from ._chat_schemas import ChatMessage as ChatMessage
from ._chat_schemas import ChatRequest as ChatRequest
from ._transcription_schemas import Segment as Segment
from ._transcription_schemas import Transcript as Transcript
from ._transcription_schemas import TranscriptionRequest as TranscriptionRequest
from ._transcription_schemas import Word as Word
from .chat import ChatServer as ChatServer
from .embeddings import EmbeddingServer as EmbeddingServer
from .transcription import TranscriptionServer as TranscriptionServer

__all__ = [
    "ChatMessage",
    "ChatRequest",
    "ChatServer",
    "EmbeddingServer",
    "Segment",
    "Transcript",
    "TranscriptionRequest",
    "TranscriptionServer",
    "Word",
]
