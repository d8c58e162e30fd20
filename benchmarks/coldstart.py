"""Cold start: from a fresh process to ``/readyz`` 200, and where the time went.

    python -m benchmarks.coldstart                   # 5 runs of each row
    python -m benchmarks.coldstart --quick --json run.json

Rows (each run a fresh process, so the OS page cache is warm after the first; the median and
the spread over the runs are reported):

- ``mfk serve examples/embeddings.py`` and ``examples/generate.py``: the process is spawned,
  then ``/readyz`` polled every 10 ms; the first successful predict follows at once. The
  phases come from what the server says anyway: its ``imported FILE in Xs`` log line (the
  user's module), the ``mfk_load_seconds{phase}`` gauge on ``/metrics`` (``load``,
  ``to_device``, ``warmup``). "start + kit" is the rest up to the module's import: the
  interpreter and the kit with FastAPI and uvicorn; "other" is the rest after it: the app
  built, uvicorn's start, the loading turn and the 10 ms poll.
- "Modal container lifecycle, offline": a fresh interpreter imports Modal's container
  runtime and the kit, then the example, builds the generated class's instance with Modal's
  ``get_user_class_instance`` and runs its ``@enter`` hooks on Modal's user-code event loop
  (``tests/modal_container.py``, the harness the container tests use), without an account.
  Ready is enter done; "other" is the deployment built and the instance made. On Modal the
  container's start, the image pull and the volume mounts come before all of this; only an
  account measures them (docs/performance.md, "Cold start", says how).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from benchmarks.contenders import BIN, ROOT, free_port

__all__ = ["PHASES", "ColdStart", "Row", "main", "parse_gauge", "parse_import_line"]

PHASES = ("start", "user_import", "load", "to_device", "warmup", "other")
POLL = 0.01  # seconds between /readyz tries
TIMEOUT = 180.0  # seconds a start may take before the run counts as failed

_IMPORTED = re.compile(r"imported (\S+) in ([0-9.]+)s")
_GAUGE = re.compile(r'^mfk_load_seconds\{(?=[^}]*phase="(\w+)")[^}]*\} ([0-9.eE+-]+)$', re.M)


@dataclass(frozen=True)
class Example:
    label: str
    target: str
    route: str
    body: dict[str, object]


EXAMPLES = {
    "embeddings": Example(
        "mfk serve examples/embeddings.py",
        "examples/embeddings.py",
        "/embed",
        {"text": "A man is eating food."},
    ),
    "generate": Example(
        "mfk serve examples/generate.py",
        "examples/generate.py",
        "/generate",
        {"prompt": "The lighthouse", "max_new_tokens": 4},
    ),
}
CONTAINER = "container"


@dataclass(frozen=True)
class ColdStart:
    """One fresh process, in seconds from its spawn."""

    phases: dict[str, float]  # PHASES, in order; they add up to ``ready``
    ready: float  # spawn to /readyz 200 (the container: to @enter done)
    first_predict: float | None  # spawn to the first successful answer


@dataclass
class Row:
    key: str
    label: str
    runs: list[ColdStart] = field(default_factory=list)
    error: str | None = None

    def median(self, pick: Callable[[ColdStart], float | None]) -> float | None:
        values = [v for run in self.runs if (v := pick(run)) is not None]
        return statistics.median(values) if values else None

    def spread(self, pick: Callable[[ColdStart], float | None]) -> tuple[float, float] | None:
        values = [v for run in self.runs if (v := pick(run)) is not None]
        return (min(values), max(values)) if values else None


def parse_import_line(lines: list[str]) -> float | None:
    """Seconds from ``mfk serve``'s ``imported FILE in Xs`` line, if it printed one."""
    for line in lines:
        if match := _IMPORTED.search(line):
            return float(match[2])
    return None


def parse_gauge(metrics: str) -> dict[str, float]:
    """``mfk_load_seconds`` by phase, from a ``/metrics`` answer."""
    return {phase: float(seconds) for phase, seconds in _GAUGE.findall(metrics)}


def _split(ready: float, before: float, user_import: float, hooks: dict[str, float]) -> dict:
    """The phases of a start ready after ``ready`` s whose user module was imported by
    ``before`` s (taking ``user_import`` of them)."""
    phases = {"start": before - user_import, "user_import": user_import}
    phases |= {hook: hooks.get(hook, 0.0) for hook in ("load", "to_device", "warmup")}
    phases["other"] = ready - sum(phases.values())
    return phases


class _Lines:
    """A process's output, each line with the time (since ``began``) it arrived."""

    def __init__(self, process: subprocess.Popen[str], began: float) -> None:
        self.seen: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._read, args=(process, began), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str], began: float) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.seen.append((time.perf_counter() - began, line.rstrip("\n")))

    def first(self, pattern: re.Pattern[str]) -> float | None:
        return next((at for at, line in self.seen if pattern.search(line)), None)

    def tail(self) -> str:
        return "\n".join(line for _, line in self.seen[-15:])


def serve_once(example: Example) -> ColdStart:
    """Spawn ``mfk serve`` on the example, wait for /readyz 200, predict once, stop it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(BIN / "mfk"), "serve", example.target, "--port", str(port)]
    began = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = _Lines(process, began)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            ready = _wait_ready(client, process, began, lines)
            answer = client.post(example.route, json=example.body)
            first_predict = time.perf_counter() - began
            if answer.status_code != 200:
                raise RuntimeError(f"{example.route} answered {answer.status_code}: {answer.text}")
            hooks = parse_gauge(client.get("/metrics").text)
        imported = lines.first(_IMPORTED)
        user_import = parse_import_line([line for _, line in lines.seen])
        if imported is None or user_import is None or not hooks:
            raise RuntimeError(f"no import line or load gauge; the server said:\n{lines.tail()}")
        return ColdStart(_split(ready, imported, user_import, hooks), ready, first_predict)
    finally:
        process.terminate()
        process.wait(30)


def _wait_ready(
    client: httpx.Client, process: subprocess.Popen[str], began: float, lines: _Lines
) -> float:
    while time.perf_counter() - began < TIMEOUT:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}):\n{lines.tail()}")
        try:
            if client.get("/readyz").status_code == 200:
                return time.perf_counter() - began
        except httpx.TransportError:
            pass
        time.sleep(POLL)
    raise RuntimeError(f"not ready in {TIMEOUT:.0f}s:\n{lines.tail()}")


# What a Modal container does before its first input, offline: the figures as one JSON line.
_CONTAINER_SCRIPT = """
import json, sys, time
began = time.perf_counter()
import modal._runtime.user_code_imports, modal_fastapi_kit
from tests.modal_container import ModalContainer
from modal_fastapi_kit._modal.container import runtime_of
from modal_fastapi_kit.cli._loading import load_service
kit = time.perf_counter()
server_cls = load_service(sys.argv[1])
user = time.perf_counter()
container = ModalContainer(server_cls)
with container:
    done = time.perf_counter()
    print(json.dumps({"since_start": done - began, "kit": kit - began, "user_import": user - kit,
                      "hooks": runtime_of(container.instance).phase_seconds}), flush=True)
"""


def container_once(example: Example) -> ColdStart:
    """A fresh interpreter to the example's ``@enter`` hooks done, with Modal's own code."""
    began = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", _CONTAINER_SCRIPT, example.target],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = _Lines(process, began)
    process.wait(TIMEOUT)
    if process.returncode != 0:
        raise RuntimeError(f"the container exited ({process.returncode}):\n{lines.tail()}")
    (at, figures) = next((at, json.loads(s)) for at, s in lines.seen if s.startswith("{"))
    ready = at  # the line is printed as the hooks finish; reading it is the last step
    interpreter = ready - figures["since_start"]
    imported = interpreter + figures["kit"] + figures["user_import"]
    return ColdStart(_split(ready, imported, figures["user_import"], figures["hooks"]), ready, None)


def measure(keys: list[str], runs: int) -> list[Row]:
    rows = [Row(key, EXAMPLES[key].label) for key in keys if key in EXAMPLES]
    if CONTAINER in keys:
        rows.append(Row(CONTAINER, "Modal container lifecycle, offline (embeddings)"))
    for number in range(runs):
        print(f"run {number + 1} of {runs}", file=sys.stderr, flush=True)
        for row in rows:
            if row.error:
                continue
            try:
                if row.key == CONTAINER:
                    row.runs.append(container_once(EXAMPLES["embeddings"]))
                else:
                    row.runs.append(serve_once(EXAMPLES[row.key]))
            except Exception as exc:  # reported in the row; the other rows still run
                row.error = f"{type(exc).__name__}: {exc}"
    return rows


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(rows: list[Row]) -> str:
    """A markdown table: the median of each phase, of ready and of the first predict (s),
    with ready's spread."""
    head = ["path", "runs", "start + kit", "user module", "load", "to_device", "warmup"]
    head += ["other", "ready (median)", "ready (min-max)", "first predict"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "--:|" * (len(head) - 1)]
    for row in rows:
        if row.error or not row.runs:
            lines.append(f"| {row.label} | failed: {row.error} |")
            continue
        cells = [_seconds(row.median(lambda r, p=p: r.phases[p])) for p in PHASES]
        low, high = row.spread(lambda r: r.ready) or (0.0, 0.0)
        cells += [_seconds(row.median(lambda r: r.ready)), f"{low:.2f}-{high:.2f}"]
        cells.append(_seconds(row.median(lambda r: r.first_predict)))
        lines.append(f"| {row.label} | {len(row.runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    every = [*EXAMPLES, CONTAINER]
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per row")
    parser.add_argument("--rows", default=",".join(every), help=f"default: {','.join(every)}")
    parser.add_argument("--quick", action="store_true", help="one run of each row")
    parser.add_argument("--json", type=Path, help="also write every run's figures to this file")
    args = parser.parse_args(argv)
    keys = [k for k in args.rows.split(",") if k]
    if unknown := [k for k in keys if k not in every]:
        parser.error(f"{unknown}: unknown rows; pick from {every}")
    rows = measure(keys, 1 if args.quick else args.runs)
    print("seconds from spawn; median over the runs\n")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(row) for row in rows], indent=1) + "\n")
    return 1 if any(row.error for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
