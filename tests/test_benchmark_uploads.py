"""The upload-memory benchmark still runs: its quick mode on the contenders that need no extra
installs, and its table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.uploads import Result, table
from tests._servers import ROOT


def test_the_table_shows_figures_and_says_why_a_row_has_none():
    measured = Result("mfk serve", "raw", 16, 20.0, 55.0, 12.6, 12.4, 2.0, 3, 1)
    skipped = Result("LitServe", "raw", 16, 20.0, skipped="no raw body")
    lines = table([measured, skipped]).splitlines()
    assert lines[2] == "| mfk serve | raw | 55 | 13 | 12 | 2.00 s | 160 |"
    assert lines[3] == "| LitServe | raw | - | - | - | - | no raw body |"


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_quick_mode_uploads_to_mfk_serve_and_plain_fastapi(tmp_path: Path):
    out = tmp_path / "uploads.json"
    args = ["--quick", "--contenders", "mfk,fastapi", "--json", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.uploads", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert [(r["contender"], r["mode"]) for r in results] == [
        ("mfk serve", "multipart"),
        ("mfk serve", "raw"),
        ("plain FastAPI", "multipart"),
        ("plain FastAPI", "raw"),
    ]
    for r in results:  # every upload was answered with its own sha256, or the run failed
        assert not r["skipped"] and r["clients"] == 4 and r["seconds"] > 0, r
        assert r["idle_mib"] > 10 and r["processes"] == 1 and r["hwm_mib"] is not None, r
    assert "| mfk serve | multipart |" in done.stdout
