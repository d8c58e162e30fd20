"""A tiny speech-to-text model behind OpenAI's transcription API: any OpenAI client can call it.

    mfk serve examples/transcribe.py --port 8002
    curl -s localhost:8002/v1/audio/transcriptions -F model=tiny-whisper -F file=@speech.wav

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8002/v1", api_key="unused")
    client.audio.transcriptions.create(model="tiny-whisper", file=open("speech.wav", "rb"))

The model is built at load time from a fixed seed, with nothing to download: it reads 16-bit
PCM WAV files (mono or stereo, any sample rate), finds where the sound is from the energy of
20 ms frames, and names each 0.4 s of sound with a word of a small vocabulary, picked from the
frames' spectrum by a random projection. Its words mean nothing, but they are a function of
the audio (the same file gives the same text, another file another text), and its segments
and word times are where the sound is. ``language`` picks the vocabulary, words of ``prompt``
are favoured, and ``temperature`` > 0 samples the words (seeded by the audio, so repeatable).
The files of concurrent requests share one projection per batch of up to 8.
"""

from __future__ import annotations

import re
import wave
import zlib
from dataclasses import dataclass

import torch

from modal_fastapi_kit import File, InputError, gpu_service
from modal_fastapi_kit.openai import (
    Segment,
    Transcript,
    TranscriptionRequest,
    TranscriptionServer,
    Word,
)

SEED = 0
RATE = 16_000  # every file is resampled to this first
FRAME = 400  # 25 ms
HOP = 320  # 20 ms
BANDS = 24
SOUND_FLOOR = 1e-3  # frame RMS below this is silence, whatever the loudest frame
SOUND_SHARE = 0.1  # ... and so is a frame below this share of the loudest one
MIN_SOUND = 5  # frames: shorter sounds are noise (0.1 s)
MAX_GAP = 15  # frames: a shorter silence does not end a segment (0.3 s)
MAX_SEGMENT = 250  # frames: a longer sound is cut into several segments (5 s)
WORD = 20  # frames per word (0.4 s)
SHARPNESS = 3.0  # the logits are the projection times this
PROMPT_BIAS = 3.0  # added to the logit of a word the prompt holds

# language -> (the name verbose_json reports, the vocabulary)
VOCABULARIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "en": (
        "english",
        ("harbor", "lantern", "river", "copper", "meadow", "signal", "window", "thunder",
         "pepper", "garden", "silver", "engine", "marble", "candle", "forest", "ladder"),
    ),
    "de": (
        "german",
        ("hafen", "laterne", "fluss", "kupfer", "wiese", "signal", "fenster", "donner",
         "pfeffer", "garten", "silber", "motor", "marmor", "kerze", "wald", "leiter"),
    ),
    "fr": (
        "french",
        ("port", "lanterne", "rivière", "cuivre", "prairie", "signal", "fenêtre", "tonnerre",
         "poivre", "jardin", "argent", "moteur", "marbre", "bougie", "forêt", "échelle"),
    ),
    "es": (
        "spanish",
        ("puerto", "linterna", "río", "cobre", "prado", "señal", "ventana", "trueno",
         "pimienta", "jardín", "plata", "motor", "mármol", "vela", "bosque", "escalera"),
    ),
}  # fmt: skip
WAV_TYPES = ("audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave")


@dataclass
class Audio:
    """A decoded file: mono samples in [-1, 1] at ``RATE``, its length, and its raw bytes'
    checksum (the seed of sampling)."""

    samples: torch.Tensor
    duration: float
    checksum: int


def read_wav(file: File) -> Audio:
    """Decode a 16-bit PCM WAV file; ``ValueError`` (or ``wave.Error``, ``EOFError``) for any
    other file."""
    with file.open() as reader, wave.open(reader) as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"its samples are {8 * wav.getsampwidth()}-bit")
        channels, rate, count = wav.getnchannels(), wav.getframerate(), wav.getnframes()
        raw = wav.readframes(count)
    if not raw:
        raise ValueError("it holds no audio")
    pcm = torch.frombuffer(bytearray(raw), dtype=torch.int16).float() / 32768
    mono = pcm[: len(pcm) // channels * channels].view(-1, channels).mean(dim=1)
    duration = len(mono) / rate
    if rate != RATE:
        size = max(1, round(duration * RATE))
        mono = torch.nn.functional.interpolate(mono[None, None], size=size, mode="linear")[0, 0]
    return Audio(mono, duration, zlib.crc32(raw))


class TinySpeech:
    """The model: a seeded random projection from frame spectra to word logits."""

    def __init__(self, seed: int = SEED) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.projection = torch.randn(BANDS, 16, generator=generator)
        self.window = torch.hann_window(FRAME)

    def transcribe(self, requests: list[TranscriptionRequest]) -> list[Transcript | InputError]:
        """One transcript per request; the words of the whole batch in one projection."""
        decoded = [_refused(request) or _decode(request.file) for request in requests]
        layouts: list[list[list[tuple[int, int]]]] = []
        features: list[torch.Tensor] = []
        for audio in decoded:
            layout, found = self._spectra(audio) if isinstance(audio, Audio) else ([], [])
            layouts.append(layout)
            features.extend(found)
        logits = torch.empty(0, 16)
        if features:  # every word of every file of the batch, in one product
            logits = torch.stack(features) @ self.projection * SHARPNESS
        results: list[Transcript | InputError] = []
        done = 0
        for request, audio, layout in zip(requests, decoded, layouts, strict=True):
            if isinstance(audio, InputError):
                results.append(audio)
                continue
            count = sum(len(words) for words in layout)
            results.append(_transcript(request, audio, layout, logits[done : done + count]))
            done += count
        return results

    def _spectra(self, audio: Audio) -> tuple[list[list[tuple[int, int]]], list[torch.Tensor]]:
        """Each segment's words as frame spans ``[first, last)``, and each word's spectrum."""
        samples = audio.samples
        if len(samples) < FRAME:
            samples = torch.nn.functional.pad(samples, (0, FRAME - len(samples)))
        frames = samples.unfold(0, FRAME, HOP)
        power = torch.fft.rfft(frames * self.window).abs().pow(2)[:, 1:]
        bands = torch.stack([b.mean(dim=1) for b in power.tensor_split(BANDS, dim=1)], dim=1)
        shape = (bands + 1e-10).log()
        rms = frames.pow(2).mean(dim=1).sqrt()
        sound = rms > max(SOUND_FLOOR, SOUND_SHARE * float(rms.max()))
        layout: list[list[tuple[int, int]]] = []
        features: list[torch.Tensor] = []
        for first, last in _sounds(sound.tolist()):
            words = torch.arange(first, last).tensor_split(max(1, round((last - first) / WORD)))
            layout.append([(int(w[0]), int(w[-1]) + 1) for w in words])
            for word in words:
                mean = shape[word].mean(dim=0)
                centred = mean - mean.mean()
                features.append(centred / (centred.norm() + 1e-8))
        return layout, features


def _decode(file: File) -> Audio | InputError:
    try:
        return read_wav(file)
    except (ValueError, wave.Error, EOFError) as exc:
        name = repr(file.filename) if file.filename else "the file"
        reason = str(exc) or "it ends too soon"
        return InputError(
            f"{name} is not a 16-bit PCM WAV file ({reason}); this model reads only those: "
            "convert it, e.g. ffmpeg -i in.mp3 -ac 1 -c:a pcm_s16le out.wav",
            status_code=400,
        )


def _transcript(
    request: TranscriptionRequest,
    audio: Audio,
    layout: list[list[tuple[int, int]]],
    logits: torch.Tensor,
) -> Transcript:
    """The words picked from ``logits`` (one row per word of ``layout``), as a transcript."""
    name, vocabulary = VOCABULARIES[request.language or "en"]
    favoured = set(re.findall(r"\w+", (request.prompt or "").lower()))
    scores = logits + torch.tensor([PROMPT_BIAS if w in favoured else 0.0 for w in vocabulary])
    if request.temperature > 0 and len(scores):
        generator = torch.Generator().manual_seed(audio.checksum)
        probs = torch.softmax(scores / request.temperature, dim=1)
        chosen = torch.multinomial(probs, 1, generator=generator)[:, 0].tolist()
    else:
        chosen = scores.argmax(dim=1).tolist()
    logprobs = torch.log_softmax(scores, dim=1)

    def seconds(frame: int) -> float:
        return round(min(audio.duration, frame * HOP / RATE), 3)

    segments: list[Segment] = []
    words: list[Word] = []
    row = 0
    for spans in layout:
        tokens = chosen[row : row + len(spans)]
        picked = [float(logprobs[row + i, t]) for i, t in enumerate(tokens)]
        said = [vocabulary[t] for t in tokens]
        for word, (first, last) in zip(said, spans, strict=True):
            words.append(Word(word=word, start=seconds(first), end=seconds(last)))
        segments.append(
            Segment(
                start=seconds(spans[0][0]),
                end=seconds(spans[-1][1]),
                text=" ".join(said).capitalize() + ".",
                tokens=tokens,
                avg_logprob=round(sum(picked) / len(picked), 4),
            )
        )
        row += len(spans)
    return Transcript(
        text=" ".join(s.text for s in segments),
        segments=segments,
        words=words if request.word_timestamps else [],
        language=name,
        duration=round(audio.duration, 3),
    )


def _refused(request: TranscriptionRequest) -> InputError | None:
    if request.language is not None and request.language not in VOCABULARIES:
        return InputError(
            f"language={request.language!r} is not served: this model knows "
            f"{', '.join(VOCABULARIES)}; leave language out for English",
            status_code=400,
        )
    return None


def _sounds(sound: list[bool]) -> list[tuple[int, int]]:
    """The frames ``[first, last)`` of each segment: runs of sound, with short gaps bridged,
    short noises dropped and long runs cut."""
    runs: list[list[int]] = []
    for i, loud in enumerate(sound):
        if not loud:
            continue
        if runs and i - runs[-1][1] <= MAX_GAP:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    cut: list[tuple[int, int]] = []
    for first, last in runs:
        if last - first < MIN_SOUND:
            continue
        for start in range(first, last, MAX_SEGMENT):
            cut.append((start, min(last, start + MAX_SEGMENT)))
    return cut


@gpu_service(
    name="tiny-whisper",
    packages=["torch==2.13.0"],
    max_batch_size=8,
    wait_ms=10,
    max_containers=2,
)
class TinyWhisper(TranscriptionServer):
    """The tiny model, OpenAI-style: WAV files only, word timestamps included."""

    model_id = "tiny-whisper"
    content_types = WAV_TYPES
    word_timestamps = True

    def load(self) -> None:
        self.model = TinySpeech()

    def transcribe(self, requests: list[TranscriptionRequest]) -> list[Transcript | InputError]:
        return self.model.transcribe(requests)


# `modal deploy examples/transcribe.py` (or `mfk deploy ...`) publishes this.
app = TinyWhisper.modal_app()
