"""examples/transcribe.py served with ``mfk serve`` and called with the official ``openai`` SDK
over real HTTP: every ``response_format`` against a direct call of the model, the options
passed through, the errors as the SDK's exceptions, concurrent requests sharing batches; then
the route's edges on small in-process servers, and the split topology as Modal runs it."""

from __future__ import annotations

import asyncio
import math
import re
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.audio import Transcription, TranscriptionVerbose

from modal_fastapi_kit import File, gpu_service
from modal_fastapi_kit.exceptions import ConfigError
from modal_fastapi_kit.openai import (
    Segment,
    Transcript,
    TranscriptionRequest,
    TranscriptionServer,
)
from modal_fastapi_kit.openai._subtitles import srt, timestamp, vtt

from .._servers import ThreadedServer, wait_ready
from ._sdk import sdk_client, serve_example

pytestmark = [pytest.mark.timeout(300)]

MODEL = "tiny-whisper"


# -- audio ---------------------------------------------------------------------------------


def _sweep(seconds: float, f0: float, f1: float, rate: int, amp: float = 0.5) -> list[float]:
    count = int(seconds * rate)
    return [
        amp * math.sin(2 * math.pi * (f0 * t + (f1 - f0) * t * t / (2 * seconds)))
        for t in (i / rate for i in range(count))
    ]


def _silence(seconds: float, rate: int) -> list[float]:
    return [0.0] * int(seconds * rate)


def write_wav(path: Path, samples: list[float], rate: int, channels: int = 1) -> Path:
    """16-bit PCM, the same samples on every channel."""
    frames = bytearray()
    for x in samples:
        frames += round(max(-1.0, min(1.0, x)) * 32767).to_bytes(2, "little", signed=True) * (
            channels
        )
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(frames))
    return path


@pytest.fixture(scope="module")
def wavs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """'speech': 16 kHz mono, three sounds; 'other': 44.1 kHz stereo, two other sounds;
    'short': a quarter second of sound."""
    folder = tmp_path_factory.mktemp("audio")
    r = 16_000
    speech = [
        *_silence(0.25, r),
        *_sweep(1.6, 200, 3500, r),
        *_silence(0.5, r),
        *_sweep(1.2, 3000, 300, r, 0.3),
        *_silence(0.4, r),
        *_sweep(0.9, 800, 1200, r),
    ]
    other = [*_silence(0.5, 44_100), *_sweep(2.0, 5000, 100, 44_100, 0.4)]
    other += [*_silence(0.7, 44_100), *_sweep(0.8, 150, 600, 44_100)]
    return {
        "speech": write_wav(folder / "speech.wav", speech, r),
        "other": write_wav(folder / "other.wav", other, 44_100, channels=2),
        "short": write_wav(folder / "short.wav", _sweep(0.25, 500, 900, r), r),
    }


@pytest.fixture(scope="module")
def model() -> Any:
    from examples.transcribe import TinySpeech

    return TinySpeech()


def direct(model: Any, path: Path, **options: Any) -> Transcript:
    """What the example's model answers for the file at ``path``, called directly."""
    (result,) = model.transcribe([TranscriptionRequest(file=File.from_path(path), **options)])
    assert isinstance(result, Transcript), result
    return result


def seconds_of(path: Path) -> float:
    with wave.open(str(path)) as wav:
        return wav.getnframes() / wav.getframerate()


# -- the example, served --------------------------------------------------------------------


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, list[str]]]:
    with serve_example("examples/transcribe.py") as (base, lines):
        yield base, lines


client = sdk_client


def transcribe(base: str, path: Path, **options: Any) -> Any:
    with path.open("rb") as audio:
        return client(base).audio.transcriptions.create(model=MODEL, file=audio, **options)


@pytest.mark.e2e
def test_json_and_text_are_the_models_text(served, wavs, model):
    base, _ = served
    texts = {}
    for name in ("speech", "other"):
        want = direct(model, wavs[name])
        got = transcribe(base, wavs[name])
        assert isinstance(got, Transcription)
        assert got.text == want.text and got.to_dict() == {"text": want.text}
        assert transcribe(base, wavs[name], response_format="text") == want.text + "\n"
        texts[name] = got.text
    assert texts["speech"] != texts["other"]  # the text is a function of the audio
    assert transcribe(base, wavs["speech"]).text == texts["speech"]  # and only of it


@pytest.mark.e2e
def test_verbose_json_has_openais_fields_and_the_models_segments(served, wavs, model):
    base, _ = served
    for name in ("speech", "other"):
        want = direct(model, wavs[name])
        got = transcribe(base, wavs[name], response_format="verbose_json")
        assert isinstance(got, TranscriptionVerbose)
        body = got.to_dict()
        assert set(body) == {"task", "language", "duration", "text", "segments"}
        assert body["task"] == "transcribe" and got.language == "english"
        assert got.duration == want.duration == pytest.approx(seconds_of(wavs[name]), abs=1e-3)
        assert got.text == want.text and got.segments is not None
        assert [(s.start, s.end, s.text, s.tokens) for s in got.segments] == [
            (s.start, s.end, s.text, s.tokens) for s in want.segments
        ]
        assert [s.id for s in got.segments] == list(range(len(want.segments))) != []
        for segment in got.segments:
            assert 0 <= segment.start < segment.end <= got.duration
            assert segment.temperature == 0 and segment.avg_logprob < 0
            assert segment.compression_ratio > 0 and segment.seek == round(segment.start * 100)
        assert got.segments[0].start > 0.2  # the files open with silence


@pytest.mark.e2e
def test_word_timestamps_when_asked_for(served, wavs, model):
    base, _ = served
    want = direct(model, wavs["speech"], word_timestamps=True)
    both = transcribe(
        base,
        wavs["speech"],
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    assert both.words is not None and both.segments is not None
    assert [(w.word, w.start, w.end) for w in both.words] == [
        (w.word, w.start, w.end) for w in want.words
    ]
    assert len(both.words) >= len(both.segments) == 3
    words = transcribe(
        base, wavs["speech"], response_format="verbose_json", timestamp_granularities=["word"]
    )
    assert words.segments is None and words.words == both.words


def _cues(text: str, decimal: str) -> list[tuple[float, float, str]]:
    stamp = rf"(\d\d):(\d\d):(\d\d){re.escape(decimal)}(\d\d\d)"
    found = re.findall(rf"^{stamp} --> {stamp}\n(.+)\n\n", text, flags=re.M)
    return [
        (
            int(h1) * 3600 + int(m1) * 60 + int(s1) + int(ms1) / 1000,
            int(h2) * 3600 + int(m2) * 60 + int(s2) + int(ms2) / 1000,
            line,
        )
        for h1, m1, s1, ms1, h2, m2, s2, ms2, line in found
    ]


@pytest.mark.e2e
def test_srt_and_vtt_are_subtitles_of_the_models_segments(served, wavs, model):
    base, _ = served
    want = [(s.start, s.end, s.text) for s in direct(model, wavs["other"]).segments]
    api = client(base).audio.transcriptions
    with wavs["other"].open("rb") as audio:
        raw = api.with_raw_response.create(model=MODEL, file=audio, response_format="srt")
    assert raw.headers["content-type"] == "application/x-subrip; charset=utf-8"
    subrip = raw.parse()
    assert isinstance(subrip, str)
    assert re.findall(r"^(\d+)\n\d\d:", subrip, flags=re.M) == [
        str(i) for i in range(1, len(want) + 1)
    ]
    assert _cues(subrip, ",") == want and subrip.endswith("\n\n")
    with wavs["other"].open("rb") as audio:
        raw = api.with_raw_response.create(model=MODEL, file=audio, response_format="vtt")
    assert raw.headers["content-type"] == "text/vtt; charset=utf-8"
    webvtt = raw.parse()
    assert webvtt.startswith("WEBVTT\n\n00:00:00.480 --> ")
    assert _cues(webvtt, ".") == want


@pytest.mark.e2e
def test_language_prompt_and_temperature_reach_the_model(served, wavs, model):
    base, _ = served
    speech = wavs["speech"]
    plain = direct(model, speech).text
    for options in (
        {"language": "de"},
        {"prompt": "a harbor signal"},
        {"temperature": 1.0},
        {"language": "fr", "prompt": "échelle", "temperature": 0.5},
    ):
        want = direct(model, speech, **options)
        assert want.text != plain, options  # each option changes this file's text
        got = transcribe(base, speech, response_format="verbose_json", **options)
        assert got.text == want.text, options
        assert got.language == want.language
        assert {s.temperature for s in got.segments or []} == {options.get("temperature", 0)}
    assert transcribe(base, speech, language="de").text.startswith("Kerze ")


def _error(raised: pytest.ExceptionInfo[openai.APIStatusError]) -> dict[str, Any]:
    body = raised.value.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert raised.value.request_id  # X-Request-ID
    return dict(body["error"])


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("options", "error", "param", "code", "says"),
    [
        ({"model": "whisper-1"}, openai.NotFoundError, "model", "model_not_found", "not served"),
        (
            {"file": ("notes.txt", b"hello, not audio")},
            openai.BadRequestError,
            "file",
            "invalid_file_format",
            "'notes.txt' is text/plain; this server takes audio/wav",
        ),
        (
            {"file": ("notes", b"hello", "application/pdf")},
            openai.BadRequestError,
            "file",
            "invalid_file_format",
            "is application/pdf",
        ),
        (
            {"file": ("fake.wav", b"ID3 mp3 frames, not RIFF")},
            openai.BadRequestError,
            None,
            "invalid_input",
            "'fake.wav' is not a 16-bit PCM WAV file",
        ),
        (
            {"file": ("empty.wav", b"")},
            openai.BadRequestError,
            "file",
            "invalid_value",
            "'empty.wav' is empty",
        ),
        ({"language": "xx"}, openai.BadRequestError, None, "invalid_input", "knows en, de"),
        (
            {"temperature": 1.5},
            openai.BadRequestError,
            "temperature",
            "invalid_value",
            "less than or equal to 1",
        ),
        (
            {"response_format": "diarized_json"},
            openai.BadRequestError,
            "response_format",
            "invalid_value",
            "'json', 'text', 'srt', 'verbose_json' or 'vtt'",
        ),
        ({"stream": True}, openai.BadRequestError, "stream", "unsupported_value", "answered"),
        (
            {"include": ["logprobs"]},
            openai.BadRequestError,
            "include[]",
            "unsupported_parameter",
            "include[] is not supported by this server",
        ),
        (
            {"timestamp_granularities": ["segment"]},
            openai.BadRequestError,
            "timestamp_granularities[]",
            "unsupported_value",
            "needs response_format=verbose_json",
        ),
    ],
)
def test_errors_are_the_sdks_exceptions_in_openais_shape(
    served, wavs, options, error, param, code, says
):
    base, _ = served
    request: dict[str, Any] = {"model": MODEL, "file": wavs["short"].read_bytes(), **options}
    if isinstance(request["file"], bytes):
        request["file"] = ("short.wav", request["file"])
    with pytest.raises(error) as raised:
        client(base, max_retries=0).audio.transcriptions.create(**request)
    body = _error(raised)
    assert (body["param"], body["code"], body["type"]) == (param, code, "invalid_request_error")
    assert says in body["message"]


@pytest.mark.e2e
def test_a_request_without_a_file_is_a_400_naming_it(served):
    base, _ = served
    for sent in ({"data": {"model": MODEL}}, {"json": {"model": MODEL}}):
        response = httpx.post(f"{base}/v1/audio/transcriptions", timeout=30, **sent)
        assert response.status_code == 400
        assert response.json() == {
            "error": {
                "message": "file: Field required",
                "type": "invalid_request_error",
                "param": "file",
                "code": "invalid_value",
            }
        }
        assert response.headers["x-request-id"]


@pytest.mark.e2e
def test_concurrent_requests_share_batches(served, wavs, model):
    base, lines = served
    files = [wavs["speech"], wavs["other"], wavs["short"]] * 8
    want = {path: direct(model, path).text for path in set(files)}
    before = len(lines)

    async def call_all() -> list[Transcription]:
        async with openai.AsyncOpenAI(
            base_url=f"{base}/v1",
            api_key="x",
            http_client=openai.DefaultAsyncHttpxClient(limits=httpx.Limits(max_connections=32)),
        ) as api:
            return await asyncio.gather(
                *(api.audio.transcriptions.create(model=MODEL, file=p) for p in files)
            )

    answers = asyncio.run(call_all())
    assert [a.text for a in answers] == [want[p] for p in files]
    for _ in range(200):  # the server's log lines reach this process a moment later
        sizes = [int(m.group(1)) for line in lines[before:] if (m := BATCH.search(line))]
        if sum(sizes) >= len(files):
            break
        time.sleep(0.05)
    assert sum(sizes) == len(files), sizes
    assert max(sizes) > 1, sizes  # the files of several requests in one model call


BATCH = re.compile(r"TinyWhisper: a batch of (\d+) in")


@pytest.mark.e2e
def test_the_openapi_document_describes_the_form_and_the_answers(served):
    base, _ = served
    schema = httpx.get(f"{base}/openapi.json").json()
    route = schema["paths"]["/v1/audio/transcriptions"]["post"]
    form = route["requestBody"]["content"]["multipart/form-data"]["schema"]
    fields = schema["components"]["schemas"][form["$ref"].rsplit("/", 1)[-1]]
    assert fields["required"] == ["file", "model"]
    assert fields["additionalProperties"] is False
    assert "timestamp_granularities[]" in fields["properties"]
    answers = route["responses"]["200"]["content"]
    assert set(answers) == {"application/json", "text/plain", "application/x-subrip", "text/vtt"}


# -- the route's edges, on small servers in this process ------------------------------------


@pytest.mark.e2e
def test_a_body_over_max_body_bytes_is_a_413_before_the_model(wavs, tmp_path):
    from examples.transcribe import TinyWhisper

    @gpu_service(name="small-whisper", max_body_bytes=40_000)
    class SmallWhisper(TinyWhisper):
        model_id = MODEL

    big = write_wav(tmp_path / "big.wav", _sweep(2.0, 300, 900, 16_000), 16_000)
    assert big.stat().st_size > 40_000 > wavs["short"].stat().st_size
    with ThreadedServer(SmallWhisper.asgi_app()) as server:
        wait_ready(server.url)
        assert transcribe(server.url, wavs["short"]).text  # under the limit: answered
        with big.open("rb") as audio, pytest.raises(openai.APIStatusError) as raised:
            client(server.url, max_retries=0).audio.transcriptions.create(model=MODEL, file=audio)
    assert raised.value.status_code == 413
    body = _error(raised)
    assert body["code"] == "request_too_large" and "limit of 40000 bytes" in body["message"]


SEEN: list[TranscriptionRequest] = []


@gpu_service(name="echo-transcriber", max_batch_size=4)
class EchoTranscriber(TranscriptionServer):
    """Answers each file's first bytes as its text, and nothing more: no segments, no
    duration (a model that gives only text)."""

    model_id = "echo"

    def transcribe(self, requests: list[TranscriptionRequest]) -> list[str]:
        SEEN.extend(requests)
        return [r.file.read()[:5].decode() for r in requests]


@pytest.fixture(scope="module")
def echo() -> Iterator[str]:
    with ThreadedServer(EchoTranscriber.asgi_app()) as server:
        wait_ready(server.url)
        yield server.url


def test_a_text_only_model_gets_one_segment_and_untyped_uploads_typed_by_name(echo):
    SEEN.clear()
    api = client(echo).audio.transcriptions
    assert api.create(model="echo", file=("a.flac", b"hello there")).text == "hello"
    verbose = api.create(model="echo", file=("b.ogg", b"xy"), response_format="verbose_json")
    assert verbose.duration == 0 and verbose.language == "unknown"
    assert [(s.start, s.end, s.text) for s in verbose.segments or []] == [(0, 0, "xy")]
    subtitles = api.create(model="echo", file=("c", b"abc"), response_format="srt")
    assert subtitles == "1\n00:00:00,000 --> 00:00:00,000\nabc\n\n"
    assert api.create(model="echo", file=("d.mp3", b"   "), response_format="vtt") == "WEBVTT\n\n"
    typed = [(r.file.content_type, r.file.filename) for r in SEEN]
    assert typed == [
        ("audio/flac", "a.flac"),
        ("audio/ogg", "b.ogg"),
        ("application/octet-stream", "c"),  # untyped and unnamed: the model decides
        ("audio/mpeg", "d.mp3"),
    ]
    assert SEEN[0].language is None and SEEN[0].temperature == 0 and not SEEN[0].word_timestamps


def test_word_timestamps_are_refused_where_the_model_gives_none(echo):
    with pytest.raises(openai.BadRequestError) as raised:
        client(echo, max_retries=0).audio.transcriptions.create(
            model="echo",
            file=("a.wav", b"RIFF"),
            response_format="verbose_json",
            timestamp_granularities=["word"],
        )
    assert "word timestamps are not served by this model" in _error(raised)["message"]


def test_an_async_transcribe_and_its_options():
    @gpu_service(name="async-transcriber")
    class AsyncTranscriber(TranscriptionServer):
        model_id = "async"

        async def transcribe(self, requests: list[TranscriptionRequest]) -> list[Transcript]:
            await asyncio.sleep(0)
            return [
                Transcript(
                    text=f"{r.language}|{r.prompt}|{r.temperature}",
                    segments=[Segment(start=0.5, end=1.25, text="a --> b\n\n c")],
                    duration=1.5,
                    language="welsh",
                )
                for r in requests
            ]

    with ThreadedServer(AsyncTranscriber.asgi_app()) as server:
        wait_ready(server.url)
        api = client(server.url).audio.transcriptions
        options = {"language": "cy", "prompt": "Bore da", "temperature": 0.25}
        got = api.create(model="async", file=("a.wav", b"RIFF"), **options)
        assert got.text == "cy|Bore da|0.25"
        vtt_text = api.create(model="async", file=("a.wav", b"x"), response_format="vtt")
        verbose = api.create(model="async", file=("a.wav", b"x"), response_format="verbose_json")
    assert vtt_text == "WEBVTT\n\n00:00:00.500 --> 00:00:01.250\na -> b\nc\n\n"
    assert (verbose.language, verbose.duration) == ("welsh", 1.5)


def test_a_wrong_content_type_pattern_fails_when_the_class_is_defined():
    with pytest.raises(ConfigError, match=r"Bad.content_types: .*'wav'"):

        class Bad(TranscriptionServer):
            content_types = ("wav",)


def test_subtitle_timestamps_and_cues():
    assert timestamp(3661.5, ",") == "01:01:01,500"
    assert timestamp(59.9996, ".") == "00:01:00.000"
    segments = [
        Segment(start=0, end=1.2344, text=" one "),
        Segment(start=1.3, end=1.3, text="  "),  # no text: no cue
        Segment(start=2, end=1, text="two"),  # ends before it starts: a cue of no length
    ]
    assert srt(segments) == (
        "1\n00:00:00,000 --> 00:00:01,234\none\n\n2\n00:00:02,000 --> 00:00:02,000\ntwo\n\n"
    )
    assert vtt(segments).splitlines()[2] == "00:00:00.000 --> 00:00:01.234"


# -- the split topology, as Modal runs it (offline) -----------------------------------------


@pytest.mark.e2e  # runs the example model (torch)
def test_split_transcription_sends_the_file_to_the_gpu_container(wavs, model):
    from examples.transcribe import TinyWhisper
    from modal_fastapi_kit._modal.build import deployment
    from modal_fastapi_kit.cli._check import describe

    from ..modal_container import ModalContainer

    described = {k: v for _, section in describe(deployment(TinyWhisper)) for k, v in section}
    assert described["routes"].startswith("POST /v1/audio/transcriptions, GET /v1/models")
    assert described["batching"] == "@modal.batched: up to 8, wait 10 ms"

    async def post(app: object, audio: bytes) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://modal") as http:
            return await http.post(
                "/v1/audio/transcriptions",
                data={"model": MODEL, "response_format": "verbose_json", "language": "es"},
                files={"file": ("other.wav", audio, "audio/wav")},
            )

    with ModalContainer(TinyWhisper) as container:
        app = TinyWhisper.asgi_app(backend="modal", handle=container.handle())
        with container.serving(app):
            response = container.run(post(app, wavs["other"].read_bytes()))
    assert response.status_code == 200, response.text
    got = TranscriptionVerbose.model_validate(response.json())
    want = direct(model, wavs["other"], language="es")
    assert (got.text, got.language, got.duration) == (want.text, "spanish", want.duration)
