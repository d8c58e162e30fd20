"""Serve the example model four ways on this machine and drive each with the same load.

    python -m benchmarks.serving                 # full run; writes docs/performance.md + .png
    python -m benchmarks.serving --quick --out-dir /tmp/bench   # seconds, for CI

Contenders, one after the other, never two at once:

- ceiling: ``Embedder.predict_batch`` in-process, no HTTP, at batch 1 and at larger batches;
- plain: a hand-written FastAPI endpoint calling the model per request (``apps/plain_fastapi``);
- litserve: LitServe with ``max_batch_size=32`` and its default wait (``apps/litserve_app``);
- mfk: ``mfk serve examples/embeddings.py``.

Each server is started, warmed, driven at each concurrency (a short warm-up run, then the
measured run), and stopped, also when something fails. Its peak memory is the summed RSS of
all its processes, sampled every 0.25 s from start to stop. A full run measures everything
twice (``--rounds``) and reports each server's best round.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import imports
from benchmarks.contenders import CONTENDERS, DEFAULT_CONTENDERS, ROOT, serving
from benchmarks.load import Generator, LoadResult, available_generator, run_load
from benchmarks.memory import IDLE_SECONDS, TreeSampler, tree_cpu_seconds
from benchmarks.report import write_plot, write_report

__all__ = ["Ceiling", "Measurement", "Preset", "Run", "best_of", "main"]


@dataclass(frozen=True)
class Preset:
    seconds: float  # measured per concurrency
    warmup: float  # an unmeasured run before each measured one
    ceiling_seconds: float  # per batch size
    batch_sizes: str
    import_runs: int
    rounds: int  # every contender, ceiling included, is measured this many times


FULL = Preset(
    seconds=10, warmup=3, ceiling_seconds=4, batch_sizes="1,8,16,32,64", import_runs=7, rounds=2
)
QUICK = Preset(seconds=1, warmup=1, ceiling_seconds=0.5, batch_sizes="1,8", import_runs=1, rounds=1)


@dataclass
class Measurement:
    """One contender: its load results per concurrency and what its processes used."""

    key: str
    label: str
    results: list[LoadResult] = field(default_factory=list)
    peak_rss: int = 0
    peak_pss: int = 0
    processes: int = 0
    ready_seconds: float = 0.0
    cpu_ms_per_request: dict[int, float] = field(default_factory=dict)
    idle_cores: float = 0.0  # CPU its processes used while ready and unused, in cores
    error: str | None = None

    def at(self, concurrency: int) -> LoadResult | None:
        return next((r for r in self.results if r.concurrency == concurrency), None)


@dataclass
class Run:
    """Everything one benchmark run measured, and where."""

    command: str
    machine: dict[str, str]
    generator: str
    seconds: float
    rounds: int
    concurrency: list[int]
    ceiling: dict[int, float]
    ceiling_cpu_ms: dict[int, float]
    ceiling_rss: int
    measurements: list[Measurement]
    imports: dict[str, Any] | None = None
    load_before: str = ""
    load_after: str = ""
    # Per server and concurrency, requests/s of every round in order (the best is above).
    round_rps: dict[str, dict[int, list[float]]] = field(default_factory=dict)


def machine() -> dict[str, str]:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    versions = subprocess.run(
        [sys.executable, "-c", _VERSIONS], capture_output=True, text=True, check=True
    ).stdout.strip()
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "memory": f"{mem_kb / 1024 / 1024:.0f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "packages": versions,
    }


_VERSIONS = """
import importlib.metadata as m
names = ["torch", "transformers", "fastapi", "uvicorn", "pydantic", "litserve"]
found = []
for n in names:
    try:
        found.append(f"{n} {m.version(n)}")
    except m.PackageNotFoundError:
        pass
print(", ".join(found))
"""


@dataclass
class Ceiling:
    rates: dict[int, float]  # texts/s per batch size
    cpu_ms_per_text: dict[int, float]
    peak_rss: int


def measure_ceiling(batch_sizes: str, seconds: float) -> Ceiling:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.ceiling"),
            *("--seconds", str(seconds), "--batch-sizes", batch_sizes),
        ],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    found = json.loads(done.stdout.strip().splitlines()[-1])
    return Ceiling(
        rates={int(k): float(v) for k, v in found["rates"].items()},
        cpu_ms_per_text={int(k): float(v) for k, v in found["cpu_ms_per_text"].items()},
        peak_rss=int(found["peak_rss"]),
    )


def measure_server(
    key: str,
    concurrency: list[int],
    *,
    generator: Generator,
    seconds: float,
    warmup: float,
    log_dir: Path,
) -> Measurement:
    contender = CONTENDERS[key]
    found = Measurement(key=key, label=contender.label)
    with (log_dir / f"{key}.log").open("w") as log, serving(contender, log) as server:
        sampler = TreeSampler(server.pid).start()
        try:
            found.ready_seconds = server.wait_ready()
            idle_before = tree_cpu_seconds(server.pid)
            time.sleep(IDLE_SECONDS)
            found.idle_cores = (tree_cpu_seconds(server.pid) - idle_before) / IDLE_SECONDS
            for c in concurrency:
                _say(f"  {key}: concurrency {c}")
                run_load(generator, server.url, concurrency=c, duration=warmup)
                cpu_before = tree_cpu_seconds(server.pid)
                result = run_load(generator, server.url, concurrency=c, duration=seconds)
                cpu = tree_cpu_seconds(server.pid) - cpu_before
                found.results.append(result)
                found.cpu_ms_per_request[c] = 1000 * cpu / max(1, result.requests)
                _say(
                    f"    {result.rps:.0f} req/s, p50 {result.p50_ms:.1f} ms, "
                    f"p99 {result.p99_ms:.1f} ms, {result.errors} errors"
                )
        except (RuntimeError, subprocess.SubprocessError) as exc:
            found.error = f"{type(exc).__name__}: {exc}"
            _say(f"  {key} failed: {found.error}; its log: {log_dir / f'{key}.log'}")
        finally:
            sampler.sample()
            sampler.stop()
    found.peak_rss, found.peak_pss = sampler.peak_rss, sampler.peak_pss
    found.processes = sampler.peak_processes
    return found


def best_of(rounds: list[Measurement]) -> Measurement:
    """One contender over several rounds: per concurrency, the round that served the most.

    Load from other work on a shared machine only ever slows a run down, so the best round
    is the closest to what the server can do; every contender is treated the same way.
    Memory is the highest peak of any round, CPU while idle the lowest of any round.
    """
    first = rounds[0]
    merged = Measurement(key=first.key, label=first.label, ready_seconds=first.ready_seconds)
    for c in sorted({r.concurrency for m in rounds for r in m.results}):
        served = [(m.at(c), m) for m in rounds if m.at(c) is not None]
        result, source = max(served, key=lambda pair: pair[0].rps if pair[0] else 0.0)
        assert result is not None
        merged.results.append(result)
        merged.cpu_ms_per_request[c] = source.cpu_ms_per_request[c]
    merged.peak_rss = max(m.peak_rss for m in rounds)
    merged.peak_pss = max(m.peak_pss for m in rounds)
    merged.processes = max(m.processes for m in rounds)
    merged.idle_cores = min(m.idle_cores for m in rounds)
    errors = [m.error for m in rounds if m.error]
    merged.error = "; ".join(errors) if errors else None
    return merged


def _round_rps(rounds: list[Measurement]) -> dict[int, list[float]]:
    """Requests/s at each concurrency, one figure per round (0 where the round failed)."""
    levels = sorted({r.concurrency for m in rounds for r in m.results})
    return {c: [round(r.rps, 1) if (r := m.at(c)) else 0.0 for m in rounds] for c in levels}


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds, not minutes (for CI)")
    parser.add_argument(
        "--contenders",
        default=",".join(DEFAULT_CONTENDERS),
        help=f"comma-separated subset of {','.join(CONTENDERS)} (default "
        f"{','.join(DEFAULT_CONTENDERS)}; the ceiling always runs)",
    )
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--seconds", type=float, help="measured seconds per concurrency")
    parser.add_argument("--rounds", type=int, help="measure everything this many times")
    parser.add_argument("--batch-sizes", help="the ceiling's batch sizes (default 1,8,16,32,64)")
    parser.add_argument("--load-generator", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument(
        "--out-dir", type=Path, default=ROOT / "docs", help="where performance.md/.png go"
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    seconds = float(args.seconds or preset.seconds)
    rounds = int(args.rounds or preset.rounds)
    batch_sizes = args.batch_sizes or preset.batch_sizes
    concurrency = [int(c) for c in args.concurrency.split(",")]
    generator: Generator = (
        available_generator() if args.load_generator == "auto" else args.load_generator
    )
    keys = [k.strip() for k in args.contenders.split(",") if k.strip()]
    unknown = [k for k in keys if k not in CONTENDERS]
    if unknown:
        parser.error(f"unknown contenders {unknown}; choose from {list(CONTENDERS)}")
    missing = [k for k in keys if not CONTENDERS[k].available()]
    if missing:
        parser.error(
            f"{missing} need benchmark-only packages: pip install -r benchmarks/requirements.txt"
        )

    args.out_dir.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.serving " + " ".join(argv if argv is not None else sys.argv[1:])
    load_before = _loadavg()
    _say("import time of modal_fastapi_kit")
    cost = imports.measure(preset.import_runs)
    ceilings: list[Ceiling] = []
    per_round: list[dict[str, Measurement]] = []
    with tempfile.TemporaryDirectory(prefix="mfk-bench-") as logs:
        for number in range(1, rounds + 1):
            _say(f"round {number} of {rounds}; ceiling: batch sizes {batch_sizes}")
            ceilings.append(measure_ceiling(batch_sizes, preset.ceiling_seconds))
            _say(f"  texts/s: { {s: round(r) for s, r in ceilings[-1].rates.items()} }")
            per_round.append({})
            # Every other round runs the servers in reverse order, so that a machine that
            # grows busier or quieter during the run favours nobody.
            for key in keys if number % 2 else keys[::-1]:
                _say(f"{key}: starting")
                found = measure_server(
                    key,
                    concurrency,
                    generator=generator,
                    seconds=seconds,
                    warmup=preset.warmup,
                    log_dir=Path(logs),
                )
                per_round[-1][key] = found
                if found.error:
                    _say(Path(logs, f"{key}.log").read_text()[-3000:])
    # Per batch size, the best round, and the CPU per text of that same round.
    best = {size: max(ceilings, key=lambda c: c.rates[size]) for size in ceilings[0].rates}
    ceiling = {size: c.rates[size] for size, c in best.items()}
    ceiling_cpu = {size: c.cpu_ms_per_text[size] for size, c in best.items()}
    ceiling_rss = max(c.peak_rss for c in ceilings)
    measurements = [best_of([r[key] for r in per_round]) for key in keys]
    run = Run(
        command=command.strip(),
        machine=machine(),
        generator=generator,
        seconds=seconds,
        rounds=rounds,
        concurrency=concurrency,
        ceiling=ceiling,
        ceiling_cpu_ms=ceiling_cpu,
        ceiling_rss=ceiling_rss,
        measurements=measurements,
        imports={**asdict(cost), "share": cost.share},
        load_before=load_before,
        load_after=_loadavg(),
        round_rps={key: _round_rps([r[key] for r in per_round]) for key in keys},
    )
    if args.json:
        args.json.write_text(json.dumps(asdict(run), indent=1) + "\n")
    plot = write_plot(run, args.out_dir / "performance.png", required=not args.quick)
    report = write_report(run, args.out_dir / "performance.md", plot=plot)
    _say(f"wrote {report}" + (f" and {plot}" if plot else ""))
    return 1 if any(m.error for m in measurements) else 0


if __name__ == "__main__":
    started = time.monotonic()
    code = main()
    _say(f"done in {time.monotonic() - started:.0f}s")
    sys.exit(code)
