"""The serving benchmark still runs: its quick mode, on contenders that need no extra installs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.load import LoadResult, parse_wrk
from benchmarks.report import BEGIN, END, render
from tests._servers import ROOT


def bench(module: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Run ``python -m benchmarks.<module> ARGS`` from the repository; what it printed."""
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


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
    bench(
        "serving",
        *("--quick", "--contenders", "plain,mfk", "--concurrency", "1,16"),
        *("--load-generator", "python", "--out-dir", str(tmp_path)),
    )
    report = (tmp_path / "performance.md").read_text()
    assert BEGIN in report and END in report
    rows = [line for line in report.splitlines() if line.startswith(("| 1 |", "| 16 |"))]
    assert len(rows) == 4, report
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        requests_per_s, errors = float(cells[2]), int(cells[5])
        assert requests_per_s > 0 and errors == 0, row
    # Loaded and unused, the kit's process does nothing.
    (kit_rest,) = [line for line in report.splitlines() if line.startswith("| mfk serve | ")]
    assert kit_rest.endswith("% of a core |") and int(kit_rest.split("|")[-2].split("%")[0]) < 20


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_the_tuned_contender_takes_the_gpu_scripts_settings(tmp_path) -> None:
    """What benchmarks/gpu.sh runs, on this machine's CPU: dtype and batch bound from the
    environment, the ceiling at the batch sizes asked for."""
    bench(
        "serving",
        *("--quick", "--contenders", "mfk-tuned", "--concurrency", "4", "--batch-sizes", "1,2"),
        *("--load-generator", "python", "--out-dir", str(tmp_path)),
        *("--json", str(tmp_path / "run.json")),
        env={"BENCH_DTYPE": "bfloat16", "BENCH_MAX_BATCH_SIZE": "2"},
    )
    run = json.loads((tmp_path / "run.json").read_text())
    assert sorted(run["ceiling"]) == ["1", "2"]
    (served,) = run["measurements"]
    assert served["key"] == "mfk-tuned" and served["results"][0]["requests"] > 0


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_the_noop_benchmark_prints_its_table() -> None:
    printed = bench(
        "noop",
        *("--rounds", "1", "--contenders", "noop-raw,noop-fastapi,noop-mfk"),
        *("--concurrency", "1,8", "--seconds", "1", "--warmup", "0.5"),
    )
    rows = [line for line in printed.splitlines() if line.startswith("| ")][1:]
    assert [row.split("|")[1].strip() for row in rows] == [
        "raw ASGI app",
        "plain FastAPI",
        "mfk serve",
    ]
    for row in rows:
        requests_per_s = float(row.split("|")[2].strip().replace(",", ""))
        assert requests_per_s > 0, row


def _quick(module: str, tmp_path, *options: str) -> dict:
    """Run ``python -m benchmarks.<module> --quick`` with ``options``; its JSON figures."""
    out = tmp_path / "run.json"
    assert bench(module, "--quick", *options, "--json", str(out)).strip(), "no report printed"
    figures: dict = json.loads(out.read_text())
    return figures


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_the_openai_embeddings_benchmark_checks_and_measures(tmp_path) -> None:
    run = _quick(
        "openai_embeddings",
        tmp_path,
        *("--contenders", "mfk", "--concurrency", "1,4", "--load-generator", "python"),
    )
    (best,) = run["best"]
    assert best["key"] == "mfk" and best["error"] is None
    assert run["checked"]["mfk"]["max_diff"] < 1e-4  # its vectors were checked first
    assert [r["concurrency"] for r in best["results"]] == [1, 4]
    assert all(r["requests"] > 0 and r["errors"] == 0 for r in best["results"]), best


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_the_streaming_benchmark_measures_both_apis(tmp_path) -> None:
    run = _quick(
        "streaming",
        tmp_path,
        *("--contenders", "joining,chat", "--concurrency", "1,2", "--max-new-tokens", "8"),
        *("--newcomers", "1", "--running", "2"),
    )
    assert [m["key"] for m in run["best"]] == ["joining", "chat"]
    for found in run["best"]:
        assert found["error"] is None, found
        for window in found["windows"]:
            assert window["requests"] > 0 and window["errors"] == 0, window
            assert window["first_p50_ms"] is not None and window["chunks"] > 0, window
    joining, chat = run["best"]
    newcomers = joining["newcomers"]  # a /generate server: a newcomer beside long streams
    assert (newcomers["running"], newcomers["errors"]) == (2, 0), newcomers
    assert len(newcomers["idle_ms"]) == len(newcomers["loaded_ms"]) == 1, newcomers
    assert newcomers["step_ms"] > 0 and chat["newcomers"] is None


def test_the_report_shows_every_round_and_the_same_round_ratio() -> None:
    from benchmarks.serving import Measurement, Run

    def served(key: str, label: str, rps: float, idle: float = 0.0) -> Measurement:
        result = LoadResult(
            concurrency=64, requests=int(rps * 10), seconds=10.0, p50_ms=1.0, p99_ms=2.0, errors=0
        )
        return Measurement(
            key=key, label=label, results=[result], cpu_ms_per_request={64: 1.0}, idle_cores=idle
        )

    run = Run(
        command="python -m benchmarks.serving",
        machine={"cpu": "cpu", "memory": "1 GiB", "os": "os", "python": "3", "packages": ""},
        generator="wrk",
        seconds=10.0,
        rounds=2,
        concurrency=[64],
        ceiling={32: 500.0},
        ceiling_cpu_ms={32: 4.0},
        ceiling_rss=0,
        measurements=[
            served("litserve", "LitServe", 300.0, idle=1.09),
            served("mfk", "mfk serve", 400.0, idle=0.002),
        ],
        round_rps={"litserve": {64: [300.0, 200.0]}, "mfk": {64: [360.0, 400.0]}},
    )
    report = render(run)
    assert "| 64 | LitServe | 300 | 200 |" in report
    assert "| 64 | mfk serve | 360 | 400 |" in report
    assert "same round: 1.20x, 2.00x." in report
    assert "| 109% of a core |" in report and "| 0% of a core |" in report
    # The goal is checked on the best rounds (400 against 300), not on a chosen pair.
    assert "| concurrency 64: req/s ≥ 1.5x LitServe | 1.33x | no |" in report


def test_a_paired_server_spec_names_a_contender_and_its_environment() -> None:
    from benchmarks.paired import parse_arm

    arm = parse_arm("mfk:GOMP_SPINCOUNT=300000,OMP_NUM_THREADS=1")
    assert (arm.key, arm.env) == ("mfk", {"GOMP_SPINCOUNT": "300000", "OMP_NUM_THREADS": "1"})
    assert parse_arm("plain").env == {}
    with pytest.raises(ValueError, match="unknown contender 'fastapi'"):
        parse_arm("fastapi")
    with pytest.raises(ValueError, match="'SPIN' in 'mfk:SPIN' is not NAME=VALUE"):
        parse_arm("mfk:SPIN")


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_a_contender_starts_with_the_environment_it_is_given(tmp_path) -> None:
    from benchmarks.contenders import CONTENDERS, serving

    with (
        (tmp_path / "log").open("w") as log,
        serving(CONTENDERS["noop-raw"], log, {"BENCH_PROBE": "paired"}) as server,
    ):
        server.wait_ready(timeout=60)
        environ = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
    assert b"BENCH_PROBE=paired" in environ


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_the_paired_benchmark_compares_servers_round_by_round(tmp_path) -> None:
    printed = bench(
        *("paired", "noop-mfk", "noop-fastapi"),
        *("--rounds", "2", "--seconds", "0.5", "--warmup", "0.2", "--concurrency", "4"),
        *("--load-generator", "python", "--json", str(tmp_path / "run.json")),
    )
    arms = json.loads((tmp_path / "run.json").read_text())
    assert [a["spec"] for a in arms] == ["noop-mfk", "noop-fastapi"]
    for arm in arms:
        assert len(arm["rps"]) == 2 and min(arm["rps"]) > 0 and arm["errors"] == 0, arm
    assert "| noop-mfk | " in printed and "| 1.000 | 1.00 1.00 |" in printed
    # Neither server works while the other is driven, so the comparison is called fair.
    for arm in arms:
        assert arm["idle_s"] > 0 and arm["idle_cpu_s"] / arm["idle_s"] < 0.05, arm
    assert "CPU while idle" in printed and "warning" not in printed


def test_the_import_benchmark_times_the_kit_and_its_client() -> None:
    figures = json.loads(bench("imports", "--runs", "1"))
    assert figures["runs"] == 1
    assert 0 < figures["kit_ms"] < figures["fastapi_modal_ms"]
    assert figures["client_ms"] > 0
    assert figures["client_pulled"] == [] and figures["heavy_imported"] == []


def test_the_cold_start_parsers_read_the_import_line_and_the_load_gauge() -> None:
    from benchmarks.coldstart import parse_gauge, parse_import_line

    log = ["INFO:     Started", "INFO      modal_fastapi_kit: imported examples/e.py in 0.14s"]
    assert parse_import_line(log) == 0.14
    assert parse_import_line(["INFO:     Started"]) is None
    metrics = (
        "# TYPE mfk_load_seconds gauge\n"
        'mfk_load_seconds{phase="load",service="embeddings-api"} 2.9\n'
        'mfk_load_seconds{service="embeddings-api",phase="to_device"} 1.5e-05\n'
        'mfk_batch_cap{service="embeddings-api"} 32.0\n'
    )
    assert parse_gauge(metrics) == {"load": 2.9, "to_device": 1.5e-05}


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_the_cold_start_benchmark_splits_each_start_into_phases(tmp_path) -> None:
    from benchmarks.coldstart import PHASES

    rows = _quick("coldstart", tmp_path, "--rows", "embeddings,container")
    assert [r["key"] for r in rows] == ["embeddings", "container"]
    for row in rows:
        assert row["error"] is None, row
        (run,) = row["runs"]
        phases = run["phases"]
        assert list(phases) == list(PHASES)
        assert all(phases[p] > 0 for p in ("start", "user_import", "load")), phases
        assert min(phases.values()) >= 0, phases
        assert sum(phases.values()) == pytest.approx(run["ready"])  # "other" is what is left
        assert sum(phases[p] for p in PHASES[:-1]) <= run["ready"]
    served = rows[0]["runs"][0]
    assert served["ready"] < served["first_predict"]
