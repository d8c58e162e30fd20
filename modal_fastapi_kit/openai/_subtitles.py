"""Segments as subtitles: SubRip (``srt``) and WebVTT (``vtt``), as OpenAI and Whisper write
them.

    1                                   WEBVTT
    00:00:00,000 --> 00:00:02,480
    The first segment.                  00:00:00.000 --> 00:00:02.480
                                        The first segment.
    2
    00:00:02,480 --> 00:00:05,000       00:00:02.480 --> 00:00:05.000
    The second one.                     The second one.

Each cue ends with a blank line; a segment with no text has no cue; a segment's blank lines
(which would end its cue) are dropped, and ``-->`` in its text is written ``->``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ._transcription_schemas import Segment

__all__ = ["SRT_TYPE", "VTT_TYPE", "srt", "timestamp", "vtt"]

SRT_TYPE = "application/x-subrip"
VTT_TYPE = "text/vtt"


def timestamp(seconds: float, decimal: str) -> str:
    """``HH:MM:SS<decimal>mmm`` (``,`` for SubRip, ``.`` for WebVTT)."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def srt(segments: Sequence[Segment]) -> str:
    """The segments as a SubRip file: numbered cues from 1."""
    cues = [f"{start} --> {end}\n{text}\n" for start, end, text in _cues(segments, ",")]
    return "".join(f"{i}\n{cue}\n" for i, cue in enumerate(cues, 1))


def vtt(segments: Sequence[Segment]) -> str:
    """The segments as a WebVTT file."""
    cues = _cues(segments, ".")
    return "WEBVTT\n\n" + "".join(f"{start} --> {end}\n{text}\n\n" for start, end, text in cues)


def _cues(segments: Sequence[Segment], decimal: str) -> list[tuple[str, str, str]]:
    cues = []
    for segment in segments:
        lines = (line.strip() for line in segment.text.replace("-->", "->").splitlines())
        text = "\n".join(line for line in lines if line)  # a blank line would end the cue
        if text:
            end = max(segment.start, segment.end)
            cues.append((timestamp(segment.start, decimal), timestamp(end, decimal), text))
    return cues
