"""``TranscriptionServer``: OpenAI's ``POST /v1/audio/transcriptions`` and ``GET /v1/models``
over a model that turns audio files into text.

    @gpu_service(name="whisper", gpu="L4", max_batch_size=8, wait_ms=20)
    class Whisper(TranscriptionServer):
        model_id = "whisper-1"

        def load(self) -> None: ...
        def transcribe(self, requests: list[TranscriptionRequest]) -> list[Transcript]: ...

Each uploaded file is one item for the kit's batcher, so the files of concurrent requests
share model calls. The upload is parsed by FastAPI within the service's ``max_body_bytes``
and reaches ``transcribe`` as a ``File`` backed by the spooled upload (never read into memory
by the kit), with the request's ``language``, ``prompt`` and ``temperature``. The answer is
OpenAI's, in the ``response_format`` asked for: ``json`` (``{"text"}``), ``text``, ``srt``,
``vtt`` or ``verbose_json`` (``task``, ``language``, ``duration``, ``text``, ``segments`` and,
with ``timestamp_granularities[]=word``, ``words``).
"""

from __future__ import annotations

import asyncio
import inspect
import io
import mimetypes
import typing
import zlib
from collections.abc import Sequence
from typing import Annotated, Any, ClassVar

from fastapi import File as Multipart  # FastAPI's Form() for multipart/form-data
from fastapi import Request, UploadFile
from fastapi.responses import Response

from .._core.spec import Api, RouteNames, ServiceSpec
from .._file import DEFAULT_CONTENT_TYPE, File, FileLimits, bare_type
from .._http.endpoint import late_error, prepare_endpoint
from .._http.errors import REQUEST_ID_HEADER, request_id
from .._http.waiting import ClientGone, outcomes
from .._server import ModelServer
from ..exceptions import ConfigError, InputError
from ._errors import OpenAIError, OpenAIRoute, RequestError, openai_error_response
from ._models import add_model_routes, check_model
from ._subtitles import SRT_TYPE, VTT_TYPE, srt, vtt
from ._transcription_schemas import (
    Segment,
    Transcript,
    TranscriptionForm,
    TranscriptionJson,
    TranscriptionRequest,
    VerboseSegment,
    VerboseTranscription,
    VerboseWord,
    Word,
)

__all__ = ["Segment", "Transcript", "TranscriptionRequest", "TranscriptionServer", "Word"]

# What OpenAI takes: flac, m4a, mp3, mp4, mpeg, mpga, oga, ogg, wav, webm.
AUDIO_TYPES = ("audio/*", "video/mp4", "video/mpeg", "video/webm", "application/ogg")


class TranscriptionServer(ModelServer[TranscriptionRequest, Transcript]):
    """Base class of an OpenAI-compatible transcription service. Write ``transcribe`` (sync
    or async): a batch of ``TranscriptionRequest`` s in, one ``Transcript`` (or just its
    text) per request out, in order; for a file it cannot read, put
    ``InputError("...", status_code=400)`` in that request's place.

    Class attributes: ``model_id`` (the id clients name, e.g. ``"whisper-1"``; default the
    service name), ``content_types`` (the upload types taken, exact or ``"audio/*"``; another
    type is a 400 before any work; an untyped upload is typed from its file name, and one
    still untyped goes to ``transcribe``), ``word_timestamps`` (whether ``transcribe`` gives
    ``words`` when ``request.word_timestamps`` is set; without it a request for word
    timestamps is refused).
    """

    __mfk_api__: ClassVar[Api]
    model_id: ClassVar[str | None] = None
    content_types: ClassVar[tuple[str, ...]] = AUDIO_TYPES
    word_timestamps: ClassVar[bool] = False

    def transcribe(
        self, requests: list[TranscriptionRequest]
    ) -> Sequence[Transcript | str | InputError]:
        """The transcript of each request's file, in order."""
        raise NotImplementedError(f"{type(self).__name__} must define transcribe(self, requests)")

    def predict_batch(self, items: list[TranscriptionRequest]) -> list[Any]:
        return _transcripts(self.transcribe(items))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        accepted_types(cls)  # a wrong pattern fails here, not on the first request
        if inspect.iscoroutinefunction(cls.transcribe):  # an async transcribe: async batches
            cls.predict_batch = _predict_batch_async  # type: ignore[method-assign,assignment]


async def _predict_batch_async(self: Any, items: list[TranscriptionRequest]) -> list[Any]:
    return _transcripts(await self.transcribe(items))


def _transcripts(results: Any) -> list[Any]:
    """What ``transcribe`` returned, with a bare text made a ``Transcript`` (the runtime
    checks the count and coerces the rest)."""
    if not isinstance(results, list | tuple):
        return typing.cast(list[Any], results)  # the runtime says what is wrong with it
    return [Transcript(text=r) if isinstance(r, str) else r for r in results]


def accepted_types(cls: type) -> FileLimits:
    """The upload types ``cls`` takes, as ``FileLimits``; a wrong pattern is a
    ``ConfigError``."""
    types = getattr(cls, "content_types", AUDIO_TYPES)
    given: Any = types if isinstance(types, str) else tuple(types)  # a str: FileLimits says so
    try:
        return FileLimits(content_types=given)
    except ValueError as exc:
        raise ConfigError(f"{cls.__name__}.content_types: {exc}") from None


# -- the routes ----------------------------------------------------------------------------


class TranscriptionApi:
    """The routes of a ``TranscriptionServer``."""

    def route_paths(self, spec: ServiceSpec) -> list[str]:
        return ["POST /v1/audio/transcriptions", "GET /v1/models"]

    def add_routes(
        self, router: Any, spec: ServiceSpec, backend: Any, dependencies: list[Any]
    ) -> RouteNames:
        cls = spec.server_cls
        accepted = accepted_types(cls)
        words_served = bool(getattr(cls, "word_timestamps", False))
        timeout = spec.config.request_timeout
        late = late_error("a result", "request_timeout", timeout)

        async def transcriptions(
            request: Request, form: Annotated[TranscriptionForm, Multipart()]
        ) -> Response:
            rid = request_id(request)
            audio: File | None = None
            try:
                check_model(spec, form.model)
                granularities = _granularities(form, words_served)
                if form.stream:
                    raise RequestError(
                        "stream=true is not supported: a transcription is answered whole; "
                        "leave stream out",
                        param="stream",
                        code="unsupported_value",
                    )
                audio = _audio(form.file, accepted)
                item = TranscriptionRequest(
                    file=audio,
                    language=form.language,
                    prompt=form.prompt,
                    temperature=form.temperature,
                    word_timestamps="word" in granularities,
                )
                deadline = asyncio.get_running_loop().time() + timeout
                (transcript,) = await outcomes(backend, request, [item], deadline, late)
                audio.close()
            except ClientGone:
                return Response(status_code=499)  # the model may still read the file: no close
            except Exception as exc:
                if audio is not None and exc is not late:  # late: it may still be read
                    audio.close()
                return openai_error_response(exc, rid)
            return _answer(transcript, item, form, granularities, rid)

        name = f"{spec.config.name}.transcriptions"
        prepare_endpoint(transcriptions, spec)
        router.add_api_route(
            "/v1/audio/transcriptions",
            transcriptions,
            methods=["POST"],
            name=name,
            summary=f"{spec.name}: transcribe an audio file",
            tags=[spec.name],
            response_model=TranscriptionJson | VerboseTranscription,
            responses={
                200: {
                    "description": "JSON for response_format json (the default) and "
                    "verbose_json; the text itself for text, srt and vtt",
                    "content": {
                        "text/plain": {"schema": {"type": "string"}},
                        SRT_TYPE: {"schema": {"type": "string"}},
                        VTT_TYPE: {"schema": {"type": "string"}},
                    },
                },
                **{code: {"model": OpenAIError} for code in (400, 401, 404, 413, 500, 503)},
            },
            dependencies=dependencies,
            route_class_override=OpenAIRoute,
        )
        shared = add_model_routes(router, spec, backend, dependencies)
        return RouteNames(exclusive=(name,), shared=shared)


TranscriptionServer.__mfk_api__ = TranscriptionApi()


def _granularities(form: TranscriptionForm, words_served: bool) -> set[str]:
    """The timestamps a ``verbose_json`` answer holds: segments unless told otherwise."""
    given = form.timestamp_granularities
    param = "timestamp_granularities[]"
    if given is None:
        return {"segment"} if form.response_format == "verbose_json" else set()
    if form.response_format != "verbose_json":
        raise RequestError(
            f"timestamp_granularities[] needs response_format=verbose_json, not "
            f"{form.response_format}: set it, or leave timestamp_granularities[] out",
            param=param,
            code="unsupported_value",
        )
    if "word" in given and not words_served:
        raise RequestError(
            "word timestamps are not served by this model: ask for "
            "timestamp_granularities[]=segment",
            param=param,
            code="unsupported_value",
        )
    return set(given)


def _audio(upload: UploadFile, accepted: FileLimits) -> File:
    """The upload as a ``File`` over its spooled file, of a type the class takes."""
    kind = bare_type(upload.content_type or "")
    if kind in ("", DEFAULT_CONTENT_TYPE):  # untyped: go by its name
        kind = mimetypes.guess_type(upload.filename or "")[0] or DEFAULT_CONTENT_TYPE
    name = repr(upload.filename) if upload.filename else "uploaded"
    if kind != DEFAULT_CONTENT_TYPE and not accepted.accepts(kind):
        raise RequestError(
            f"the file {name} is {kind}; this server takes {', '.join(accepted.content_types)}"
            ": send an audio file of one of those types",
            param="file",
            code="invalid_file_format",
        )
    # The File takes the spooled file over: the form's close() after the answer must not
    # close it under a model that still reads it (for a client that has left).
    spooled, upload.file = upload.file, io.BytesIO()
    audio = File.from_fileobj(spooled, content_type=kind, filename=upload.filename)
    if audio.size == 0:
        audio.close()
        raise RequestError(f"the file {name} is empty", param="file", code="invalid_value")
    return audio


def _answer(
    transcript: Transcript,
    item: TranscriptionRequest,
    form: TranscriptionForm,
    granularities: set[str],
    rid: str,
) -> Response:
    headers = {REQUEST_ID_HEADER: rid}
    fmt = form.response_format
    if fmt == "text":
        return Response(transcript.text + "\n", media_type="text/plain", headers=headers)
    if fmt == "srt":
        body = srt(_segments(transcript))
        return Response(body, media_type=f"{SRT_TYPE}; charset=utf-8", headers=headers)
    if fmt == "vtt":
        return Response(vtt(_segments(transcript)), media_type=VTT_TYPE, headers=headers)
    answer: TranscriptionJson | VerboseTranscription = (
        _verbose(transcript, item, granularities)
        if fmt == "verbose_json"
        else TranscriptionJson(text=transcript.text)
    )
    data = answer.__pydantic_serializer__.to_json(answer, exclude_none=True)
    return Response(data, media_type="application/json", headers=headers)


def _segments(transcript: Transcript) -> list[Segment]:
    """The transcript's segments; without any, its whole text as one."""
    if transcript.segments or not transcript.text.strip():
        return transcript.segments
    return [Segment(start=0.0, end=_duration(transcript), text=transcript.text)]


def _duration(transcript: Transcript) -> float:
    if transcript.duration is not None:
        return transcript.duration
    return max((s.end for s in transcript.segments), default=0.0)


def _verbose(
    transcript: Transcript, item: TranscriptionRequest, granularities: set[str]
) -> VerboseTranscription:
    segments = words = None
    if "segment" in granularities:
        segments = [
            VerboseSegment(
                id=i,
                seek=round(s.start * 100),  # in Whisper's 10 ms frames
                start=s.start,
                end=s.end,
                text=s.text,
                tokens=s.tokens,
                temperature=item.temperature,
                avg_logprob=s.avg_logprob,
                compression_ratio=_compression_ratio(s.text),
                no_speech_prob=s.no_speech_prob,
            )
            for i, s in enumerate(_segments(transcript))
        ]
    if "word" in granularities:
        words = [VerboseWord(word=w.word, start=w.start, end=w.end) for w in transcript.words]
    return VerboseTranscription(
        language=transcript.language or item.language or "unknown",
        duration=_duration(transcript),
        text=transcript.text,
        segments=segments,
        words=words,
    )


def _compression_ratio(text: str) -> float:
    """Whisper's measure of a repetitive text: its UTF-8 length over its zlib length."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0
