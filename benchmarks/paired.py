"""Two or more servers side by side: loaded at once, driven in turn, compared round by round.

    python -m benchmarks.paired mfk plain --concurrency 1
    python -m benchmarks.paired mfk mfk:GOMP_SPINCOUNT=300000 --rounds 8 --seconds 4

On a shared machine whose speed drifts by more than the difference being looked for, two
best rounds taken minutes apart can rank the same pair either way. Here every server is
started first and stays up; each round then drives them one after the other for a few
seconds (every other round in reverse order), so each round compares the servers under the
same conditions. The report is, per server, the median over the rounds of its requests/s
divided by the first server's in the same round, with its median p50 and CPU per request.
A server that uses CPU while it is not driven slows the others' runs; the report shows that
CPU for each server and says when it makes the comparison unfair.

A server is a contender's key (``benchmarks/contenders.py``), optionally followed by
``:NAME=VALUE,...`` environment variables it is started with.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.contenders import CONTENDERS, Server, serving
from benchmarks.load import Generator, available_generator, run_load
from benchmarks.memory import tree_cpu_seconds

__all__ = ["Arm", "compare", "parse_arm"]

IDLE_LIMIT = 0.05  # cores a server may keep busy while idle before the report calls it unfair


@dataclass
class Arm:
    """One server of the comparison and what each round measured on it."""

    spec: str
    key: str
    env: dict[str, str]
    rps: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)  # server CPU per request
    errors: int = 0
    idle_cpu_s: float = 0.0  # CPU it used while the other servers were driven
    idle_s: float = 0.0

    @property
    def idle_share(self) -> float:
        """Cores it kept busy while idle: what it took from the others' runs."""
        return self.idle_cpu_s / self.idle_s if self.idle_s else 0.0


def parse_arm(spec: str) -> Arm:
    """``"mfk:GOMP_SPINCOUNT=300000,OMP_NUM_THREADS=1"`` -> the contender and its variables."""
    key, _, assignments = spec.partition(":")
    if key not in CONTENDERS:
        raise ValueError(f"unknown contender {key!r} in {spec!r}; choose from {list(CONTENDERS)}")
    env: dict[str, str] = {}
    for assignment in filter(None, assignments.split(",")):
        name, sep, value = assignment.partition("=")
        if not sep or not name:
            raise ValueError(f"{assignment!r} in {spec!r} is not NAME=VALUE")
        env[name] = value
    return Arm(spec=spec, key=key, env=env)


def compare(
    arms: list[Arm],
    *,
    concurrency: int,
    rounds: int,
    seconds: float,
    warmup: float,
    generator: Generator,
    log_dir: Path,
) -> list[Arm]:
    """Start every arm, warm each up, then measure them in turn, ``rounds`` times."""
    with ExitStack() as stack:
        servers: list[Server] = []
        for number, arm in enumerate(arms):
            log = stack.enter_context(Path(log_dir, f"{number}.log").open("w"))
            servers.append(stack.enter_context(serving(CONTENDERS[arm.key], log, arm.env)))
        for server in servers:
            server.wait_ready()
            run_load(generator, server.url, concurrency=concurrency, duration=warmup)
        for number in range(rounds):
            order = list(range(len(arms)))
            for index in order if number % 2 == 0 else order[::-1]:
                arm, server = arms[index], servers[index]
                before = [tree_cpu_seconds(s.pid) for s in servers]
                started = time.monotonic()
                result = run_load(generator, server.url, concurrency=concurrency, duration=seconds)
                elapsed = time.monotonic() - started
                used = [tree_cpu_seconds(s.pid) - b for s, b in zip(servers, before, strict=True)]
                cpu = used[index]
                for other, other_cpu in zip(arms, used, strict=True):
                    if other is not arm:
                        other.idle_cpu_s += other_cpu
                        other.idle_s += elapsed
                arm.rps.append(result.rps)
                arm.p50_ms.append(result.p50_ms)
                arm.cpu_ms.append(1000 * cpu / max(result.requests, 1))
                arm.errors += result.errors
    return arms


def report(arms: list[Arm], concurrency: int) -> str:
    first = arms[0]
    lines = [
        f"concurrency {concurrency}, {len(first.rps)} rounds; ratios are to {first.spec}, "
        "same round",
        "",
        "| server | median req/s | median ratio | ratios by round | median p50 ms "
        "| median CPU ms/req | errors | CPU while idle |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for arm in arms:
        ratios = [a / b if b else 0.0 for a, b in zip(arm.rps, first.rps, strict=True)]
        lines.append(
            f"| {arm.spec} | {statistics.median(arm.rps):.0f} "
            f"| {statistics.median(ratios):.3f} | {' '.join(f'{r:.2f}' for r in ratios)} "
            f"| {statistics.median(arm.p50_ms):.1f} | {statistics.median(arm.cpu_ms):.3f} "
            f"| {arm.errors} | {100 * arm.idle_share:.0f}% of a core |"
        )
    for arm in arms:
        if arm.idle_share > IDLE_LIMIT:
            lines.append(
                f"\nwarning: {arm.spec} kept {100 * arm.idle_share:.0f}% of a core busy while "
                "the others were driven, which slowed their runs: this comparison is unfair "
                "to them; compare it with python -m benchmarks.serving, which runs one server "
                "at a time"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("servers", nargs="+", help="KEY or KEY:NAME=VALUE,... (two or more)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0, help="measured per server and round")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--load-generator", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args(argv)
    if len(args.servers) < 2:
        parser.error("give two servers or more to compare")
    try:
        arms = [parse_arm(spec) for spec in args.servers]
    except ValueError as exc:
        parser.error(str(exc))
    if missing := sorted({a.key for a in arms if not CONTENDERS[a.key].available()}):
        parser.error(f"{missing} need: pip install -r benchmarks/requirements.txt")
    generator: Generator = (
        available_generator() if args.load_generator == "auto" else args.load_generator
    )
    with tempfile.TemporaryDirectory(prefix="mfk-paired-") as logs:
        compare(
            arms,
            concurrency=args.concurrency,
            rounds=args.rounds,
            seconds=args.seconds,
            warmup=args.warmup,
            generator=generator,
            log_dir=Path(logs),
        )
    print(report(arms, args.concurrency))
    if args.json:
        args.json.write_text(json.dumps([asdict(a) for a in arms], indent=1) + "\n")
    return 1 if any(a.errors for a in arms) else 0


if __name__ == "__main__":
    sys.exit(main())
