"""The serving benchmark still runs: its quick mode, on contenders that need no extra installs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks.load import parse_wrk
from benchmarks.report import BEGIN, END
from tests._servers import ROOT


def test_parse_wrk_reads_the_line_the_lua_script_prints() -> None:
    output = (
        "Running 10s test @ http://127.0.0.1:8000/embed\n"
        "BENCH requests=1200 duration_us=10000000 p50_us=51000 p99_us=120500 "
        "socket_errors=1 status_errors=200 timeouts=2\n"
    )
    result = parse_wrk(output, concurrency=64)
    assert result.requests == 1000  # non-2xx answers are errors, not served requests
    assert result.rps == pytest.approx(100.0)
    assert (result.p50_ms, result.p99_ms, result.errors) == (51.0, 120.5, 203)


def test_parse_wrk_without_the_line_says_what_wrk_printed() -> None:
    with pytest.raises(RuntimeError, match="connection refused"):
        parse_wrk("unable to connect: connection refused", concurrency=1)


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_quick_mode_serves_measures_and_reports(tmp_path) -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.serving", "--quick"),
            *("--contenders", "plain,mfk", "--concurrency", "1,16"),
            *("--load-generator", "python", "--out-dir", str(tmp_path)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = (tmp_path / "performance.md").read_text()
    assert BEGIN in report and END in report
    rows = [line for line in report.splitlines() if line.startswith(("| 1 |", "| 16 |"))]
    assert len(rows) == 4, report
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        requests_per_s, errors = float(cells[2]), int(cells[5])
        assert requests_per_s > 0 and errors == 0, row


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_the_tuned_contender_takes_the_gpu_scripts_settings(tmp_path) -> None:
    """What benchmarks/gpu.sh runs, on this machine's CPU: dtype and batch bound from the
    environment, the ceiling at the batch sizes asked for."""
    done = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.serving", "--quick"),
            *("--contenders", "mfk-tuned", "--concurrency", "4", "--batch-sizes", "1,2"),
            *("--load-generator", "python", "--out-dir", str(tmp_path)),
            *("--json", str(tmp_path / "run.json")),
        ],
        cwd=ROOT,
        env={**os.environ, "BENCH_DTYPE": "bfloat16", "BENCH_MAX_BATCH_SIZE": "2"},
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads((tmp_path / "run.json").read_text())
    assert sorted(run["ceiling"]) == ["1", "2"]
    (served,) = run["measurements"]
    assert served["key"] == "mfk-tuned" and served["results"][0]["requests"] > 0


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_the_noop_benchmark_prints_its_table() -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.noop", "--rounds", "1"),
            *("--contenders", "noop-raw,noop-fastapi,noop-mfk", "--concurrency", "1,8"),
            *("--seconds", "1", "--warmup", "0.5"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")][1:]
    assert [row.split("|")[1].strip() for row in rows] == [
        "raw ASGI app",
        "plain FastAPI",
        "mfk serve",
    ]
    for row in rows:
        requests_per_s = float(row.split("|")[2].strip().replace(",", ""))
        assert requests_per_s > 0, row
