"""What a service and its clients agree on, with no web stack behind it.

The request-id header, the error body and its codes, the edge-secret header and the generic
request and response types: the client imports this module, the server builds on it, and
neither imports the other.
"""

from __future__ import annotations

import re
from typing import TypeVar

from pydantic import BaseModel

from ._file import File
from .exceptions import ErrorCode

__all__ = [
    "EDGE_SECRET_HEADER",
    "IDEMPOTENCY_HEADER",
    "MIN_SECRET_LENGTH",
    "REPLAYED_HEADER",
    "REQUEST_ID_HEADER",
    "WEBHOOK_HEADER",
    "ErrorBody",
    "RequestT",
    "ResponseT",
    "idempotency_key_ok",
]

REQUEST_ID_HEADER = "x-request-id"

# The header an edge proves itself with (``OriginLock``), and the shortest secret accepted.
EDGE_SECRET_HEADER = "x-mfk-edge-secret"
MIN_SECRET_LENGTH = 32

# A job's submission: the key that makes a retried submission return the same job (1 to 255
# printable ASCII characters, no spaces), the URL told when the job ends, and the answer's
# mark of a replayed submission.
IDEMPOTENCY_HEADER = "idempotency-key"
WEBHOOK_HEADER = "webhook-url"
REPLAYED_HEADER = "idempotent-replayed"
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")


def idempotency_key_ok(key: object) -> bool:
    """Whether ``key`` is an ``Idempotency-Key`` a service takes."""
    return isinstance(key, str) and _IDEMPOTENCY_KEY.fullmatch(key) is not None


RequestT = TypeVar("RequestT", bound=BaseModel)
# A service answers a response model, or a file (``ModelServer[In, File]``).
ResponseT = TypeVar("ResponseT", bound=BaseModel | File)


class ErrorBody(BaseModel):
    """The body of every error the kit answers (a 422's ``detail`` is FastAPI's error list).

    ``code`` is one of ``modal_fastapi_kit.exceptions.ErrorCode``: what a client branches
    on. ``detail`` is for people and may be reworded.
    """

    detail: str
    code: ErrorCode
    request_id: str | None = None
