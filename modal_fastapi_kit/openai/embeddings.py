"""``EmbeddingServer``: OpenAI's ``POST /v1/embeddings`` and ``GET /v1/models`` over a model
that turns texts into vectors.

    @gpu_service(name="minilm", gpu="A10", max_batch_size=64)
    class MiniLM(EmbeddingServer):
        model_id = "all-MiniLM-L6-v2"

        def load(self) -> None: ...
        def embed(self, texts: list[str]) -> list[list[float]]: ...
        def count_tokens(self, texts: list[str]) -> list[int]: ...  # optional: usage

Every input of a request is one item for the kit's batcher, so the inputs of concurrent
requests share model batches, and a request with many inputs is spread over several batches
and put back together in order. The answer is OpenAI's: ``data[i].index`` in input order,
``encoding_format`` ``float`` or ``base64`` (little-endian float32, what the official Python
client asks for by default), ``usage`` from ``count_tokens`` (0 without it).
"""

from __future__ import annotations

import array
import asyncio
import base64
import inspect
import sys
from collections.abc import Sequence
from typing import Any, ClassVar

from fastapi import Request
from fastapi.responses import Response

from .._core.spec import Api, RouteNames, ServiceSpec
from .._http.endpoint import late_error, prepare_endpoint
from .._http.errors import REQUEST_ID_HEADER, request_id
from .._http.waiting import ClientGone, outcomes
from .._server import ModelServer
from ._embedding_schemas import (
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    Input,
    TextItem,
    Vector,
)
from ._errors import OpenAIError, OpenAIRoute, RequestError, openai_error_response
from ._models import add_model_routes, check_model, model_id

__all__ = ["EmbeddingServer"]

DEFAULT_MAX_INPUTS = 2048  # OpenAI's own limit per request
DEFAULT_MAX_INPUT_CHARS = 32_768


class EmbeddingServer(ModelServer[TextItem, Vector]):
    """Base class of an OpenAI-compatible embeddings service. Write ``embed`` (sync or async);
    optionally ``count_tokens`` for ``usage``.

    Class attributes: ``model_id`` (the id clients name; default the service name),
    ``max_inputs`` per request (2048), ``max_input_chars`` per input (32768), and
    ``dimensions`` (the vectors' length, if known: a request for another is refused before
    any work; otherwise it is checked on the vectors).
    """

    __mfk_api__: ClassVar[Api]
    model_id: ClassVar[str | None] = None
    max_inputs: ClassVar[int] = DEFAULT_MAX_INPUTS
    max_input_chars: ClassVar[int] = DEFAULT_MAX_INPUT_CHARS
    dimensions: ClassVar[int | None] = None

    def embed(self, texts: list[str]) -> Sequence[Sequence[float]]:
        """The vector of each text, in order (lists, or arrays with ``tolist()``)."""
        raise NotImplementedError(f"{type(self).__name__} must define embed(self, texts)")

    def count_tokens(self, texts: list[str]) -> Sequence[int] | None:
        """Optional: each text's token count, reported as ``usage``."""
        return None

    def predict_batch(self, items: list[TextItem]) -> list[Vector]:
        texts = [item.text for item in items]
        return _vectors(self.embed(texts), self.count_tokens(texts), len(texts))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if inspect.iscoroutinefunction(cls.embed):  # an async embed: an async predict_batch
            cls.predict_batch = _predict_batch_async  # type: ignore[method-assign,assignment]


async def _predict_batch_async(self: Any, items: list[TextItem]) -> list[Vector]:
    texts = [item.text for item in items]
    counts = self.count_tokens(texts)
    if inspect.isawaitable(counts):
        counts = await counts
    return _vectors(await self.embed(texts), counts, len(texts))


def _vectors(vectors: Any, counts: Sequence[int] | None, expected: int) -> list[Any]:
    """``Vector`` s from what ``embed`` / ``count_tokens`` returned (lists, arrays, tensors)."""
    if hasattr(vectors, "tolist"):
        vectors = vectors.tolist()
    rows = [v.tolist() if hasattr(v, "tolist") else list(v) for v in vectors]
    if len(rows) != expected:
        return rows  # the runtime answers the wrong count for the whole batch
    tokens = list(counts) if counts is not None else [0] * expected
    if len(tokens) != expected:
        raise ValueError(f"count_tokens returned {len(tokens)} counts for {expected} texts")
    return [
        Vector.model_construct(embedding=row, tokens=int(n))
        for row, n in zip(rows, tokens, strict=True)
    ]


class EmbeddingsApi:
    """The routes of an ``EmbeddingServer``."""

    def route_paths(self, spec: ServiceSpec) -> list[str]:
        return ["POST /v1/embeddings", "GET /v1/models"]

    def add_routes(
        self, router: Any, spec: ServiceSpec, backend: Any, dependencies: list[Any]
    ) -> RouteNames:
        cls = spec.server_cls
        served = model_id(spec)
        limit_inputs: int = getattr(cls, "max_inputs", DEFAULT_MAX_INPUTS)
        limit_chars: int = getattr(cls, "max_input_chars", DEFAULT_MAX_INPUT_CHARS)
        native: int | None = getattr(cls, "dimensions", None)
        timeout = spec.config.request_timeout
        late = late_error("a result", "request_timeout", timeout)

        async def embeddings(request: Request, body: EmbeddingRequest) -> Response:
            rid = request_id(request)
            try:
                check_model(spec, body.model)
                texts = _texts(body.input, limit_inputs, limit_chars)
                if body.dimensions is not None and native is not None:
                    _check_dimensions(body.dimensions, native)
                deadline = asyncio.get_running_loop().time() + timeout
                items = [TextItem.model_construct(text=text) for text in texts]
                vectors: list[Vector] = await outcomes(backend, request, items, deadline, late)
                if body.dimensions is not None:
                    _check_dimensions(body.dimensions, len(vectors[0].embedding))
            except ClientGone:
                return Response(status_code=499)  # the client is gone; nobody reads this
            except Exception as exc:
                return openai_error_response(exc, rid)
            answer = _response(vectors, served, body.encoding_format)
            return Response(
                answer.__pydantic_serializer__.to_json(answer),
                media_type="application/json",
                headers={REQUEST_ID_HEADER: rid},
            )

        name = f"{spec.config.name}.embeddings"
        prepare_endpoint(embeddings, spec)
        router.add_api_route(
            "/v1/embeddings",
            embeddings,
            methods=["POST"],
            name=name,
            summary=f"{spec.name}: create embeddings",
            tags=[spec.name],
            response_model=EmbeddingResponse,
            responses={code: {"model": OpenAIError} for code in (400, 401, 404, 422, 500, 503)},
            dependencies=dependencies,
            route_class_override=OpenAIRoute,
        )
        shared = add_model_routes(router, spec, backend, dependencies)
        return RouteNames(exclusive=(name,), shared=shared)


def _texts(given: Input, most: int, chars: int) -> list[str]:
    texts: list[Any] = [given] if isinstance(given, str) else list(given)
    param = "input" if isinstance(given, str) else None
    if not texts:
        raise RequestError(
            "input is empty: send a string or a list of strings",
            param="input",
            code="invalid_value",
        )
    if not all(isinstance(t, str) for t in texts):
        raise RequestError(
            "input as token ids is not supported by this server: send the text itself",
            param="input",
            code="unsupported_value",
        )
    if len(texts) > most:
        raise RequestError(
            f"input has {len(texts)} items; this server takes at most {most} per request: "
            "split it over several requests",
            param="input",
            code="too_many_inputs",
        )
    for i, text in enumerate(texts):
        where = param or f"input[{i}]"
        if len(text) > chars:
            raise RequestError(
                f"{where} is {len(text)} characters long; this server takes at most {chars}",
                param=where,
                code="input_too_long",
            )
        if not text:
            raise RequestError(f"{where} is empty", param=where, code="invalid_value")
    return texts


EmbeddingServer.__mfk_api__ = EmbeddingsApi()


def _check_dimensions(requested: int, native: int) -> None:
    if requested != native:
        raise RequestError(
            f"dimensions={requested} is not supported: this model's vectors have {native} "
            "dimensions; leave dimensions out",
            param="dimensions",
            code="unsupported_value",
        )


def _response(vectors: list[Vector], model: str, encoding: str) -> EmbeddingResponse:
    data = [
        EmbeddingData.model_construct(
            object="embedding",
            index=i,
            embedding=_base64(v.embedding) if encoding == "base64" else v.embedding,
        )
        for i, v in enumerate(vectors)
    ]
    tokens = sum(v.tokens for v in vectors)
    return EmbeddingResponse.model_construct(
        object="list",
        data=data,
        model=model,
        usage=EmbeddingUsage.model_construct(prompt_tokens=tokens, total_tokens=tokens),
    )


def _base64(vector: list[float]) -> str:
    """Little-endian float32, base64: what OpenAI sends and its clients decode."""
    floats = array.array("f", vector)
    if sys.byteorder != "little":
        floats.byteswap()
    return base64.b64encode(floats.tobytes()).decode("ascii")
