"""The request path's own cost: four servers around a model that does no work.

    python -m benchmarks.noop                    # wrk, concurrency 1 and 64, three rounds
    python -m benchmarks.noop --contenders noop-fastapi,noop-mfk --rounds 5

Contenders (``benchmarks/apps/noop.py``, ``noop_litserve.py``): a raw ASGI app, a plain
FastAPI ``async def`` endpoint with the same pydantic models, ``mfk serve`` with
``max_batch_size=32, wait_ms=5``, and LitServe with the same batching. Rounds alternate the
order; each contender's best round is reported with the CPU its processes used per request.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from benchmarks.contenders import CONTENDERS
from benchmarks.load import Generator, available_generator
from benchmarks.serving import Measurement, best_of, measure_server

__all__ = ["main"]

DEFAULT = ("noop-raw", "noop-fastapi", "noop-mfk", "noop-litserve")


def table(measurements: list[Measurement], concurrency: list[int]) -> str:
    """A markdown table: req/s, p50 and CPU per request at each concurrency."""
    fastapi = next((m for m in measurements if m.key == "noop-fastapi"), None)
    head = "| server | " + " | ".join(
        f"c={c} req/s | c={c} p50 ms | c={c} CPU ms/req" for c in concurrency
    )
    lines = [head + " | vs FastAPI at c=" + str(max(concurrency)) + " |"]
    lines.append("|---" * (1 + 3 * len(concurrency) + 1) + "|")
    for m in measurements:
        cells = []
        for c in concurrency:
            r = m.at(c)
            cpu = m.cpu_ms_per_request.get(c)
            cells += (
                [f"{r.rps:,.0f}", f"{r.p50_ms:.2f}", f"{cpu:.3f}" if cpu else "-"]
                if r
                else ["-"] * 3
            )
        top, base = m.at(max(concurrency)), fastapi.at(max(concurrency)) if fastapi else None
        ratio = f"{top.rps / base.rps:.2f}x" if top and base and base.rps else "-"
        lines.append(f"| {m.label} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--contenders", default=",".join(DEFAULT), help=f"default: {','.join(DEFAULT)}"
    )
    parser.add_argument("--concurrency", default="1,64")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args(argv)
    keys = [k for k in args.contenders.split(",") if k]
    unavailable = [k for k in keys if k not in CONTENDERS or not CONTENDERS[k].available()]
    if unavailable:
        parser.error(f"{unavailable}: unknown, or needs pip install -r benchmarks/requirements.txt")
    concurrency = [int(c) for c in args.concurrency.split(",")]
    generator: Generator = available_generator()
    rounds: list[dict[str, Measurement]] = []
    with tempfile.TemporaryDirectory(prefix="mfk-noop-") as logs:
        for number in range(args.rounds):
            print(f"round {number + 1} of {args.rounds}", file=sys.stderr, flush=True)
            order = keys if number % 2 == 0 else keys[::-1]
            rounds.append(
                {
                    key: measure_server(
                        key,
                        concurrency,
                        generator=generator,
                        seconds=args.seconds,
                        warmup=args.warmup,
                        log_dir=Path(logs),
                    )
                    for key in order
                }
            )
    measurements = [best_of([r[key] for r in rounds]) for key in keys]
    print(f"{generator}, {args.seconds:.0f} s per run, best of {args.rounds} rounds\n")
    print(table(measurements, concurrency))
    if args.json:
        args.json.write_text(json.dumps([asdict(m) for m in measurements], indent=1) + "\n")
    return 1 if any(m.error for m in measurements) else 0


if __name__ == "__main__":
    sys.exit(main())
