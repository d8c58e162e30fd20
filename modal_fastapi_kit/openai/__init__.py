"""OpenAI-compatible services on the kit's core: write how a model embeds texts or generates
text, get the routes the official clients call.

- ``EmbeddingServer``: ``POST /v1/embeddings``, ``GET /v1/models``.
- ``ChatServer``: ``POST /v1/chat/completions`` (streamed or not), ``GET /v1/models``.

Errors are OpenAI's ``{"error": {"message", "type", "param", "code"}}``; request fields this
server does not support are refused with a 400 naming them, never ignored.
"""

from ._chat_schemas import ChatMessage as ChatMessage
from ._chat_schemas import ChatRequest as ChatRequest
from .chat import ChatServer as ChatServer
from .embeddings import EmbeddingServer as EmbeddingServer

__all__ = ["ChatMessage", "ChatRequest", "ChatServer", "EmbeddingServer"]
