"""Jobs: a corpus embedded as one job against the same texts sent one request each.

    python -m benchmarks.jobs                    # 4,000 texts, two rounds
    python -m benchmarks.jobs --quick            # 200 texts, one round, for CI

One corpus (``--texts`` lines of 3 to 40 words, every fiftieth a 300-word paragraph that the
model truncates at 256 tokens; the same every run) is embedded four ways on this machine, one
at a time (both servers are started first, and idle while another way runs):

- ``job``: ``mfk serve examples/corpus.py``; the corpus is uploaded once to
  ``POST /corpus/jobs`` (multipart, ``batch_size=64``), the result route is long-polled
  (``?wait=30``) until it answers, and the ``.npy`` is downloaded: from the first byte sent to
  the last byte read;
- ``requests``: ``mfk serve examples/embeddings.py`` (dynamic batching up to 32); every text
  is its own ``POST /embed``, ``--concurrency`` at a time (64, as benchmarks/serving.py
  drives it), from the first request to the last answer;
- ``job work``: ``CorpusEmbedder.predict`` called here, no HTTP: the model's part of the job
  (the whole corpus longest first, 64 texts a batch);
- ``request batches``: ``Embedder.predict_batch`` called here on the texts in their order, 32
  at a time: the model's part of the requests at best (the batches the requests' server
  makes from 64 waiting requests).

Every way's vectors are checked against the job's work in process: the job's are equal bit
for bit (the same batches, the same arithmetic), the others within 1e-4 (other batches, other
padding). The clients run in this process and share the machine's cores with the servers; a
job's client sleeps through it, the requests' client parses 64 connections' worth of JSON.
The ways take turns, every other round in the reverse order, and each figure is the best of
``--rounds`` rounds (load from other work only ever slows a run down).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import random
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.contenders import BIN, Contender, Server, free_port
from benchmarks.uploads import machine
from modal_fastapi_kit.cli._serve import OPENMP_SPIN_COUNT

__all__ = ["WAYS", "Result", "corpus", "main", "table"]

WAYS = ("job", "requests", "job work", "request batches")
BATCH_SIZE = 64  # the job's batch_size (the example's default)
REQUEST_BATCH = 32  # examples/embeddings.py's max_batch_size
WAIT_S = 30  # each long-poll of the result route
TOLERANCE = 1e-4  # between vectors of other batches (float32 sums in another order)
WORDS = (
    "the a an of to in and is was for on with as by at from it that this be are or not "
    "model corpus vector embedding search query document river mountain city train night "
    "summer music engine data result batch queue server client request answer job file "
    "line text word number language people time year day week world story report"
)
VOCABULARY = WORDS.split()


@dataclass
class Result:
    way: str
    label: str
    texts: int
    seconds: list[float] = field(default_factory=list)  # every round, in order
    max_diff: float | None = None  # against the in-process vectors
    skipped: str = ""

    @property
    def best(self) -> float:
        return min(self.seconds) if self.seconds else 0.0

    @property
    def texts_per_s(self) -> float:
        return self.texts / self.best if self.best else 0.0


def corpus(count: int, seed: int = 2026) -> list[str]:
    """``count`` texts of 3 to 40 words, every fiftieth one 300 words long."""
    rng = random.Random(seed)
    texts = []
    for i in range(count):
        words = 300 if i % 50 == 49 else rng.randint(3, 40)
        texts.append(" ".join(rng.choice(VOCABULARY) for _ in range(words)).capitalize() + ".")
    return texts


def _server(name: str, target: str, port: int, log: Any, env: dict[str, str]) -> Server:
    command = [str(BIN / "mfk"), "serve", target, "--host=127.0.0.1", f"--port={port}"]
    command.append("--log-level=warning")
    server = Server(Contender(name, name, lambda _: command), port, log, env)
    try:
        server.wait_ready(urllib.request.Request(f"http://127.0.0.1:{port}/readyz"))
    except BaseException:
        server.stop()
        raise
    return server


# -- the job --------------------------------------------------------------------------------


def run_job(base: str, data: bytes) -> tuple[float, np.ndarray]:
    """Submit ``data`` as one job, long-poll its result, download it; (seconds, vectors)."""
    with httpx.Client(timeout=WAIT_S + 30) as client:
        started = time.perf_counter()
        submitted = client.post(
            f"{base}/corpus/jobs",
            files={"corpus": ("corpus.txt", data, "text/plain")},
            data={"batch_size": str(BATCH_SIZE)},
        )
        if submitted.status_code != 202:
            raise RuntimeError(f"submit answered {submitted.status_code}: {submitted.text[:300]}")
        result_url = submitted.json()["links"]["result"]
        while True:
            answer = client.get(result_url, params={"wait": WAIT_S})
            if answer.status_code == 200:
                break
            if answer.status_code != 202:
                raise RuntimeError(f"result answered {answer.status_code}: {answer.text[:300]}")
        seconds = time.perf_counter() - started
    return seconds, np.load(io.BytesIO(answer.content), allow_pickle=False)


# -- one request per text -------------------------------------------------------------------


async def _requests(url: str, texts: list[str], concurrency: int) -> tuple[float, np.ndarray]:
    vectors = np.empty((len(texts), 384), dtype=np.float32)
    cursor = iter(range(len(texts)))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def worker() -> None:
            for i in cursor:
                response = await client.post(url, json={"text": texts[i]})
                if response.status_code != 200:
                    raise RuntimeError(f"{url} answered {response.status_code}: {response.text}")
                vectors[i] = response.json()["embedding"]

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, vectors


def run_requests(base: str, texts: list[str], concurrency: int) -> tuple[float, np.ndarray]:
    """Every text its own ``POST /embed``, ``concurrency`` at once; (seconds, vectors)."""
    return asyncio.run(_requests(f"{base}/embed", texts, concurrency))


# -- the model alone ------------------------------------------------------------------------


class InProcess:
    """Both examples' models, loaded here once."""

    def __init__(self) -> None:
        from examples.corpus import CorpusEmbedder
        from examples.embeddings import Embedder

        self.corpus = CorpusEmbedder()
        self.corpus.load()
        self.corpus.warmup()
        self.embedder = Embedder()
        self.embedder.load()
        self.embedder.warmup()

    def job_work(self, data: bytes) -> tuple[float, np.ndarray]:
        """``CorpusEmbedder.predict`` on the corpus in ``data``; (seconds, vectors)."""
        from examples.corpus import CorpusIn
        from modal_fastapi_kit import File

        item = CorpusIn(corpus=File(data, content_type="text/plain"), batch_size=BATCH_SIZE)
        started = time.perf_counter()
        answer = self.corpus.predict(item)
        seconds = time.perf_counter() - started
        return seconds, np.load(io.BytesIO(answer.read()), allow_pickle=False)

    def request_batches(self, texts: list[str]) -> tuple[float, np.ndarray]:
        """``Embedder.predict_batch`` on ``texts`` in their order, ``REQUEST_BATCH`` at a time:
        the batches requests make at best; (seconds, vectors)."""
        from examples.embeddings import EmbedIn

        vectors = np.empty((len(texts), 384), dtype=np.float32)
        started = time.perf_counter()
        for start in range(0, len(texts), REQUEST_BATCH):
            items = [EmbedIn(text=text) for text in texts[start : start + REQUEST_BATCH]]
            answers = self.embedder.predict_batch(items)
            vectors[start : start + len(items)] = [answer.embedding for answer in answers]
        return time.perf_counter() - started, vectors


# -- the run --------------------------------------------------------------------------------


def measure(texts: list[str], *, rounds: int, concurrency: int, log: Path) -> list[Result]:
    """Both servers started, then ``rounds`` rounds of the four ways, every other round in
    the reverse order (load from other work only slows a run: the best round counts)."""
    data = ("\n".join(texts) + "\n").encode()
    labels = {
        "job": "one job: submit, long-poll, download",
        "requests": f"one POST /embed per text, {concurrency} at once",
        "job work": f"in process: CorpusEmbedder.predict (longest first, {BATCH_SIZE} a batch)",
        "request batches": (
            f"in process: Embedder.predict_batch (file order, {REQUEST_BATCH} a batch)"
        ),
    }
    results = {way: Result(way, labels[way], len(texts)) for way in WAYS}
    answers: dict[str, np.ndarray] = {}
    store = Path(tempfile.mkdtemp(prefix="mfk-jobs-bench-")) / "jobs.sqlite3"
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(log.open("a"))
        corpus_port, embed_port = free_port(), free_port()
        corpus_url = f"http://127.0.0.1:{corpus_port}"
        embed_url = f"http://127.0.0.1:{embed_port}"
        env = {"MFK_JOBS_DB": str(store)}
        stack.callback(_server("corpus", "examples/corpus.py", corpus_port, out, env).stop)
        stack.callback(_server("embeddings", "examples/embeddings.py", embed_port, out, {}).stop)
        here = InProcess()
        run_job(corpus_url, b"warm up\n")
        run_requests(embed_url, texts[: concurrency * 2], concurrency)
        ways = {
            "job": lambda: run_job(corpus_url, data),
            "requests": lambda: run_requests(embed_url, texts, concurrency),
            "job work": lambda: here.job_work(data),
            "request batches": lambda: here.request_batches(texts),
        }
        for number in range(rounds):
            for way in WAYS if number % 2 == 0 else WAYS[::-1]:
                seconds, answers[way] = ways[way]()
                results[way].seconds.append(seconds)
                print(f"round {number + 1}, {way}: {seconds:.2f} s", flush=True)
    want = answers["job work"]
    for result in results.values():
        result.max_diff = float(np.abs(answers[result.way] - want).max())
        exact = result.way in ("job", "job work")
        if (exact and result.max_diff != 0.0) or result.max_diff > TOLERANCE:
            raise RuntimeError(
                f"{result.label}: its vectors differ from the job's work in process by "
                f"{result.max_diff} (expected {'0' if exact else f'<= {TOLERANCE}'})"
            )
    return list(results.values())


def table(results: list[Result]) -> str:
    """The results as a markdown table."""
    rows = [
        "| way | texts | best round | texts/s | max diff from the job's work in process |",
        "|---|--:|--:|--:|--:|",
    ]
    for r in results:
        if r.max_diff is None:
            diff = "-"
        elif r.max_diff == 0:
            diff = "0 (bit for bit)"
        else:
            diff = f"{r.max_diff:.1e}"
        rows.append(f"| {r.label} | {r.texts:,} | {r.best:.2f} s | {r.texts_per_s:,.0f} | {diff} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.jobs", description=__doc__.split("\n", 1)[0]
    )
    parser.add_argument("--texts", type=int, default=4000, help="lines of the corpus")
    parser.add_argument("--concurrency", type=int, default=64, help="requests at once")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="200 texts, 16 at once, one round")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.texts, args.concurrency, args.rounds = 200, 16, 1
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GOMP_SPINCOUNT", OPENMP_SPIN_COUNT)  # as mfk serve sets it
    log = Path(tempfile.mkdtemp(prefix="mfk-jobs-")) / "servers.log"
    print(f"machine: {machine()}", flush=True)
    print(
        f"{args.texts} texts, {args.rounds} round(s), {args.concurrency} requests at once; "
        f"server logs: {log}",
        flush=True,
    )
    results = measure(corpus(args.texts), rounds=args.rounds, concurrency=args.concurrency, log=log)
    print()
    print(table(results))
    if args.json:
        figures = [{**asdict(r), "best": r.best, "texts_per_s": r.texts_per_s} for r in results]
        args.json.write_text(json.dumps({"machine": machine(), "results": figures}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
