"""``POST /v1/embeddings`` throughput: ``mfk serve`` against LitServe's ``OpenAIEmbeddingSpec``.

    python -m benchmarks.openai_embeddings                # full: 2 rounds, 3 s warm-up + 10 s each
    python -m benchmarks.openai_embeddings --quick        # 1 round, 1 s warm-up + 2 s each
    python -m benchmarks.openai_embeddings --inputs 8 --out report.md --json raw.json
    python -m benchmarks.openai_embeddings --litserve-timeout-ms 0   # LitServe's own default

Both servers run all-MiniLM-L6-v2 on CPU with the same model code (``examples.embeddings.MiniLM``),
one after the other, never two at once:

- mfk: ``mfk serve examples/openai_embeddings.py`` (every input is one batcher item; batches
  of up to 64 inputs, ``wait_ms=5``);
- litserve: ``python -m benchmarks.apps.litserve_openai_embeddings`` (one inference worker,
  ``max_batch_size=64`` requests, ``batch_timeout`` 5 ms unless ``--litserve-timeout-ms``).
  Its spec refuses (400) a request with several inputs while batching is on, so with
  ``--inputs`` > 1 it runs with ``max_batch_size=1``: each request is one model call on its
  own texts, while the kit batches inputs across and within requests.

Every request is ``{"model": "all-MiniLM-L6-v2", "input": "A man is eating food.",
"encoding_format": "float"}``, or with ``--inputs K`` the sentence K times in a list. Before
its load, each server answers a string and a list (float and base64); the answers must
validate as ``openai.types.CreateEmbeddingResponse`` and their vectors equal, to 1e-4, those
the same model code computes in a separate process (and so each other's). A wrong server
stops the run (exit 2). The load is ``benchmarks/load.py`` (wrk, or its asyncio fallback):
at each concurrency a warm-up, one request to wait out what the warm-up's abandoned requests
left queued, then a measured run; server CPU is its whole process tree. A
full run measures everything twice, in alternating order, and keeps each row's best round.
"""

from __future__ import annotations

import argparse
import array
import base64
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from benchmarks.contenders import BIN, ROOT, ROUTE, Contender, serving
from benchmarks.load import SENTENCE, Generator, available_generator, run_load
from benchmarks.memory import TreeSampler, tree_cpu_seconds
from benchmarks.serving import Measurement, best_of, machine

__all__ = ["Preset", "Run", "WrongAnswer", "body", "contenders", "main", "report"]

PATH = "/v1/embeddings"
MODEL = "all-MiniLM-L6-v2"
DIMENSIONS = 384
TOLERANCE = 1e-4
CHECK_TEXTS = (
    SENTENCE,
    "The lighthouse keeper climbed the narrow stairs.",
    "Bread needs flour, water, salt and time.",
)
MiB = 1024 * 1024


@dataclass(frozen=True)
class Preset:
    seconds: float  # measured per concurrency
    warmup: float  # an unmeasured run before each measured one
    rounds: int  # every contender is measured this many times


FULL = Preset(seconds=10, warmup=3, rounds=2)
QUICK = Preset(seconds=2, warmup=1, rounds=1)


def body(inputs: int) -> str:
    """The request every connection sends: the sentence, or ``inputs`` copies in a list."""
    given: str | list[str] = SENTENCE if inputs == 1 else [SENTENCE] * inputs
    return json.dumps({"model": MODEL, "input": given, "encoding_format": "float"})


def contenders(inputs: int, litserve_timeout_ms: float = 5.0) -> dict[str, Contender]:
    """The two servers; LitServe batches requests only when each carries one input."""
    litserve_batch = 64 if inputs == 1 else 1
    timeout_s = litserve_timeout_ms / 1000

    def mfk(port: int) -> list[str]:
        return [
            *(str(BIN / "mfk"), "serve", "examples/openai_embeddings.py"),
            *("--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"),
        ]

    def litserve(port: int) -> list[str]:
        return [
            *(sys.executable, "-m", "benchmarks.apps.litserve_openai_embeddings"),
            *(f"--port={port}", f"--max-batch-size={litserve_batch}"),
            f"--batch-timeout={timeout_s}",
        ]

    wait = f", {litserve_timeout_ms:g} ms" if litserve_batch > 1 else ""
    return {
        c.key: c
        for c in (
            Contender("mfk", "mfk serve (batch 64 inputs, 5 ms)", mfk),
            Contender(
                "litserve",
                f"LitServe OpenAIEmbeddingSpec (batch {litserve_batch}{wait})",
                litserve,
                requires="litserve",
            ),
        )
    }


# -- the correctness check ---------------------------------------------------------------------


class WrongAnswer(RuntimeError):
    """A server answered something other than OpenAI's response with the model's vectors."""


@dataclass
class Checked:
    """What one server's check found: its vectors of ``CHECK_TEXTS`` and what to mention."""

    vectors: list[list[float]]
    max_diff: float  # against the reference
    notes: list[str] = field(default_factory=list)


def reference() -> tuple[list[list[float]], list[int]]:
    """``CHECK_TEXTS`` through the model code in a fresh process: vectors and token counts."""
    code = (
        "import json, sys\n"
        "from examples.embeddings import MiniLM\n"
        "texts = json.loads(sys.argv[1])\n"
        "m = MiniLM()\n"
        "print(json.dumps({'vectors': m.encode(texts), 'tokens': m.count_tokens(texts)}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(list(CHECK_TEXTS))],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    found = json.loads(done.stdout.strip().splitlines()[-1])
    return found["vectors"], found["tokens"]


def _post(url: str, payload: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        with contextlib.suppress(ValueError):
            return exc.code, json.loads(text)
        return exc.code, text


def _floats(b64: str) -> list[float]:
    floats = array.array("f", base64.b64decode(b64))
    if sys.byteorder != "little":
        floats.byteswap()
    return floats.tolist()


def _diff(a: list[float], b: list[float]) -> float:
    if len(a) != len(b):
        return float("inf")
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def check(url: str, label: str, expected: list[list[float]], tokens: list[int]) -> Checked:
    """Ask ``url`` for ``CHECK_TEXTS`` as strings and as a list, float and base64.

    Raises ``WrongAnswer`` for an invalid response or a vector off by more than 1e-4.
    """
    from openai.types import CreateEmbeddingResponse
    from pydantic import ValidationError

    problems: list[str] = []
    notes: list[str] = []

    def ask(given: str | list[str], encoding: str = "float") -> Any:
        status, answer = _post(url, {"model": MODEL, "input": given, "encoding_format": encoding})
        if status != 200:
            problems.append(f"input={given!r} ({encoding}): HTTP {status}: {str(answer)[:300]}")
            return None
        if encoding == "base64":
            return answer
        try:
            return CreateEmbeddingResponse.model_validate(answer)
        except ValidationError as exc:
            problems.append(f"input={given!r}: not OpenAI's CreateEmbeddingResponse: {exc}")
            return None

    def compare(where: str, got: list[float], want: list[float]) -> float:
        diff = _diff(got, want)
        if not diff <= TOLERANCE:
            problems.append(f"{where}: vector differs from the model's by {diff:.2e} (> 1e-4)")
        return diff

    strings: list[list[float]] = []
    diffs: list[float] = []
    for i, text in enumerate(CHECK_TEXTS):
        answer = ask(text)
        if answer is None:
            continue
        if len(answer.data) != 1 or answer.data[0].index != 0 or answer.model != MODEL:
            problems.append(f"input={text!r}: {len(answer.data)} items, model {answer.model!r}")
            continue
        if answer.usage.prompt_tokens != tokens[i]:
            notes.append(f"usage.prompt_tokens {answer.usage.prompt_tokens}, model: {tokens[i]}")
        strings.append(answer.data[0].embedding)
        diffs.append(compare(f"input={text!r}", strings[-1], expected[i]))

    status, _ = _post(url, {"model": "no-such-model", "input": SENTENCE})
    if status == 200:
        notes.append("answers 200 for an unknown model id (OpenAI: 404)")
    texts = list(CHECK_TEXTS)
    status, refused = _post(url, {"model": MODEL, "input": texts, "encoding_format": "float"})
    if status == 200:
        lists = [texts]
    else:
        notes.append(f"refuses a list of {len(texts)} inputs: HTTP {status}: {str(refused)[:200]}")
        lists = [[text] for text in texts]  # what it does take: lists of one
    start = 0
    for given in lists:
        answer = ask(given)
        if answer is not None:
            if [d.index for d in answer.data] != list(range(len(given))):
                problems.append(f"input={given!r}: indices {[d.index for d in answer.data]}")
            for j, item in enumerate(answer.data[: len(given)]):
                diffs.append(
                    compare(f"input[{j}] of {given!r}", item.embedding, expected[start + j])
                )
        b64 = ask(given, "base64")
        if b64 is not None:
            for j, item in enumerate(b64.get("data", [])[: len(given)]):
                compare(
                    f"base64 input[{j}] of {given!r}",
                    _floats(item["embedding"]),
                    expected[start + j],
                )
        start += len(given)
    if problems or len(strings) != len(CHECK_TEXTS):
        raise WrongAnswer(f"{label} answered wrongly at {url}:\n  " + "\n  ".join(problems))
    return Checked(vectors=strings, max_diff=max(diffs), notes=notes)


# -- one server --------------------------------------------------------------------------------


def drain(url: str, payload: str, timeout: float = 120.0) -> float:
    """One request, answered once the server has worked off what earlier clients left.

    When the load generator stops, the requests it had in flight are abandoned; a server
    that computes them anyway (LitServe does, in arrival order) would spend the start of the
    next measured run on them. Returns the seconds it took.
    """
    started = time.monotonic()
    request = urllib.request.Request(
        url, data=payload.encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        answer.read()
    return time.monotonic() - started


def measure_server(
    contender: Contender,
    concurrency: list[int],
    *,
    generator: Generator,
    payload: str,
    seconds: float,
    warmup: float,
    expected: tuple[list[list[float]], list[int]],
    checked: dict[str, Checked],
    log: IO[str],
) -> Measurement:
    """Start ``contender``, check it (the first time), drive it at each concurrency, stop it."""
    found = Measurement(key=contender.key, label=contender.label)
    with serving(contender, log) as server:
        url = server.url.removesuffix(ROUTE) + PATH
        sampler = TreeSampler(server.pid).start()
        try:
            found.ready_seconds = server.wait_ready(
                urllib.request.Request(
                    url, data=payload.encode(), headers={"content-type": "application/json"}
                )
            )
            if contender.key not in checked:
                checked[contender.key] = check(url, contender.label, *expected)
                _compare_servers(checked)
            for c in concurrency:
                _say(f"  {contender.key}: concurrency {c}")
                run_load(generator, url, concurrency=c, duration=warmup, body=payload)
                drained = drain(url, payload)
                if drained > 1.0:
                    _say(f"    {drained:.1f} s to drain what the warm-up left queued")
                cpu_before = tree_cpu_seconds(server.pid)
                result = run_load(generator, url, concurrency=c, duration=seconds, body=payload)
                cpu = tree_cpu_seconds(server.pid) - cpu_before
                found.results.append(result)
                found.cpu_ms_per_request[c] = 1000 * cpu / max(1, result.requests)
                _say(
                    f"    {result.rps:.0f} req/s, p50 {result.p50_ms:.1f} ms, "
                    f"p99 {result.p99_ms:.1f} ms, {result.errors} errors"
                )
        except (OSError, RuntimeError) as exc:
            if isinstance(exc, WrongAnswer):
                raise
            found.error = f"{type(exc).__name__}: {exc}"
            _say(f"  {contender.key} failed: {found.error}")
        finally:
            sampler.sample()
            sampler.stop()
    found.peak_rss, found.peak_pss = sampler.peak_rss, sampler.peak_pss
    found.processes = sampler.peak_processes
    return found


def _compare_servers(checked: dict[str, Checked]) -> None:
    if len(checked) < 2:
        return
    (a, first), (b, second) = list(checked.items())[:2]
    diff = max(_diff(x, y) for x, y in zip(first.vectors, second.vectors, strict=True))
    if not diff <= TOLERANCE:
        raise WrongAnswer(f"{a} and {b} answer vectors {diff:.2e} apart (> 1e-4)")


# -- the report --------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything one benchmark run measured, and where."""

    command: str
    machine: dict[str, str]
    generator: str
    inputs: int
    body: str
    seconds: float
    warmup: float
    rounds: int
    concurrency: list[int]
    best: list[Measurement]
    per_round: list[list[Measurement]]
    checked: dict[str, dict[str, Any]]
    load_before: str = ""
    load_after: str = ""
    wall_seconds: float = 0.0


def report(run: Run) -> str:
    m = run.machine
    rows = [
        "| server | clients | requests/s | inputs/s | p50 (ms) | p99 (ms) | errors "
        "| server CPU ms / request | peak RSS (MiB) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for measurement in run.best:
        for r in measurement.results:
            rows.append(
                f"| {measurement.label} | {r.concurrency} | {r.rps:.0f} "
                f"| {r.rps * run.inputs:.0f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.errors} "
                f"| {measurement.cpu_ms_per_request[r.concurrency]:.1f} "
                f"| {measurement.peak_rss / MiB:.0f} |"
            )
        if measurement.error:
            rows.append(f"| {measurement.label} | failed: {measurement.error} |||||||")
    by_key = {measurement.key: measurement for measurement in run.best}
    ratios: list[str] = []
    if "mfk" in by_key and "litserve" in by_key:
        kit, lit = by_key["mfk"], by_key["litserve"]
        ratios = [
            "",
            "| mfk / LitServe | clients | requests/s | p50 | p99 | server CPU / request |",
            "|---|--:|--:|--:|--:|--:|",
        ]
        for c in run.concurrency:
            a, b = kit.at(c), lit.at(c)
            if a is None or b is None:
                continue
            ratios.append(
                f"| ratio | {c} | {_ratio(a.rps, b.rps)} | {_ratio(a.p50_ms, b.p50_ms)} "
                f"| {_ratio(a.p99_ms, b.p99_ms)} "
                f"| {_ratio(kit.cpu_ms_per_request[c], lit.cpu_ms_per_request[c])} |"
            )
    checks = [
        f"- {key}: largest difference from the model's own vectors {c['max_diff']:.1e}"
        + "".join(f"; {note}" for note in c["notes"])
        for key, c in run.checked.items()
    ]
    rounds = f"best of {run.rounds} rounds" if run.rounds > 1 else "1 round"
    shape = "one string" if run.inputs == 1 else f"a list of {run.inputs} copies of it"
    return "\n".join(
        [
            "## OpenAI embeddings: mfk serve and LitServe",
            "",
            f"`{run.command}` on {m['cpu']}, {m['memory']}, {m['os']}, Python {m['python']}; "
            f"{m['packages']}. Load average {run.load_before} before, {run.load_after} after; "
            f"{rounds}; load generator {run.generator}.",
            "",
            *rows,
            *ratios,
            "",
            "Answers checked before the load (a string and a list, float and base64, "
            "validated as `openai.types.CreateEmbeddingResponse`, vectors within 1e-4):",
            "",
            *checks,
            "",
            f"Method: both servers run all-MiniLM-L6-v2 on CPU with the same model code "
            f"(`examples.embeddings.MiniLM`), one at a time. Each request is `POST {PATH}` "
            f"with `{run.body}` ({shape}; inputs/s = requests/s x {run.inputs}). At each "
            f"concurrency, {run.warmup:g} s of unmeasured load, one request that waits out "
            f"what that load left queued, then {run.seconds:g} s measured "
            f"with closed-loop keep-alive connections. Errors are non-2xx answers, socket "
            f"errors and timeouts; server CPU is the server's whole process tree during the "
            f"measured run, per request served. Ratios are mfk / LitServe: above 1 is better "
            f"for requests/s, below 1 for latency and CPU"
            + (f"; the best of {run.rounds} rounds per row." if run.rounds > 1 else "."),
            "",
        ]
    )


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds, not minutes")
    parser.add_argument("--contenders", default="mfk,litserve", help="subset of mfk,litserve")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated")
    parser.add_argument("--inputs", type=int, default=1, help="inputs per request (1: a string)")
    parser.add_argument(
        "--litserve-timeout-ms",
        type=float,
        default=5.0,
        help="LitServe's batch_timeout (default 5, the kit's wait_ms; LitServe's own is 0)",
    )
    parser.add_argument("--seconds", type=float, help="measured seconds per concurrency")
    parser.add_argument("--warmup", type=float, help="warm-up seconds before each measured run")
    parser.add_argument("--rounds", type=int, help="measure everything this many times")
    parser.add_argument("--load-generator", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--out", type=Path, help="also write the markdown section here")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args(argv)
    started = time.monotonic()
    preset = QUICK if args.quick else FULL
    seconds = float(args.seconds or preset.seconds)
    warmup = float(args.warmup if args.warmup is not None else preset.warmup)
    rounds = int(args.rounds or preset.rounds)
    concurrency = [int(c) for c in args.concurrency.split(",")]
    if not 1 <= args.inputs <= 2048:
        parser.error("--inputs is 1 to 2048 (OpenAI's limit per request)")
    servers = contenders(args.inputs, args.litserve_timeout_ms)
    keys = [k.strip() for k in args.contenders.split(",") if k.strip()]
    if unknown := [k for k in keys if k not in servers]:
        parser.error(f"unknown contenders {unknown}; choose from {list(servers)}")
    if missing := [k for k in keys if not servers[k].available()]:
        parser.error(f"{missing} need: pip install -r benchmarks/requirements.txt")
    generator: Generator = (
        available_generator() if args.load_generator == "auto" else args.load_generator
    )
    payload = body(args.inputs)
    command = "python -m benchmarks.openai_embeddings " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    load_before = _loadavg()
    _say("reference vectors")
    expected = reference()
    checked: dict[str, Checked] = {}
    per_round: list[list[Measurement]] = []
    with tempfile.TemporaryDirectory(prefix="mfk-openai-bench-") as logs:
        for number in range(1, rounds + 1):
            _say(f"round {number} of {rounds}")
            per_round.append([])
            # Every other round runs the servers in reverse order, so that a machine that
            # grows busier or quieter during the run favours nobody.
            for key in keys if number % 2 else keys[::-1]:
                _say(f"{key}: starting")
                log_path = Path(logs, f"{key}.log")
                try:
                    with log_path.open("w") as log:
                        found = measure_server(
                            servers[key],
                            concurrency,
                            generator=generator,
                            payload=payload,
                            seconds=seconds,
                            warmup=warmup,
                            expected=expected,
                            checked=checked,
                            log=log,
                        )
                except WrongAnswer as exc:
                    _say(f"aborted, the vectors are wrong: {exc}")
                    return 2
                per_round[-1].append(found)
                if found.error:
                    _say(log_path.read_text()[-3000:])
    run = Run(
        command=command.strip(),
        machine=machine(),
        generator=generator,
        inputs=args.inputs,
        body=payload,
        seconds=seconds,
        warmup=warmup,
        rounds=rounds,
        concurrency=concurrency,
        best=[best_of([m for r in per_round for m in r if m.key == key]) for key in keys],
        per_round=per_round,
        checked={k: {"max_diff": c.max_diff, "notes": c.notes} for k, c in checked.items()},
        load_before=load_before,
        load_after=_loadavg(),
        wall_seconds=round(time.monotonic() - started, 1),
    )
    text = report(run)
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(asdict(run), indent=1) + "\n")
    _say(f"done in {run.wall_seconds:.0f}s")
    return 1 if any(m.error for m in run.best) else 0


if __name__ == "__main__":
    sys.exit(main())
