"""The serving benchmark still runs: its quick mode, on contenders that need no extra installs."""

from __future__ import annotations

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
