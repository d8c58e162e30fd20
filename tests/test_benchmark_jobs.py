"""The jobs benchmark still runs: its quick mode end to end, and its table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.jobs import WAYS, Result, corpus, table
from tests._servers import ROOT


def test_the_corpus_is_the_same_every_run_with_a_long_paragraph_in_fifty():
    texts = corpus(100)
    assert texts == corpus(100) and len(set(texts)) == 100
    assert [i for i, t in enumerate(texts) if len(t.split()) == 300] == [49, 99]
    assert all(3 <= len(t.split()) <= 40 for i, t in enumerate(texts) if i % 50 != 49)


def test_the_table_shows_the_best_round_and_how_far_each_way_is_from_the_job_s_work():
    exact = Result("job", "one job", 1000, seconds=[5.0, 4.0], max_diff=0.0)
    close = Result("requests", "requests", 1000, seconds=[20.0], max_diff=1.5e-7)
    lines = table([exact, close]).splitlines()
    assert lines[2] == "| one job | 1,000 | 4.00 s | 250 | 0 (bit for bit) |"
    assert lines[3] == "| requests | 1,000 | 20.00 s | 50 | 1.5e-07 |"


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_quick_mode_embeds_the_corpus_four_ways_and_checks_every_vector(tmp_path: Path):
    out = tmp_path / "jobs.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.jobs", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert [r["way"] for r in results] == list(WAYS)
    for r in results:  # the run fails unless every way's vectors were checked
        assert r["texts"] == 200 and len(r["seconds"]) == 1 and r["texts_per_s"] > 0, r
    assert [r["max_diff"] == 0 for r in results] == [True, False, True, False]
    assert all(r["max_diff"] < 1e-4 for r in results)
    assert "| one job: submit, long-poll, download | 200 |" in done.stdout
