"""``testing.serve`` / ``aserve`` of a class with jobs: the jobs work, in a temporary file
that is gone after the test."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from modal_fastapi_kit import testing

from ..services.jobbers import Counter


def _scratch_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("mfk-jobs-*"))


def test_serve_keeps_jobs_in_a_temporary_file_removed_on_exit(monkeypatch, tmp_path):
    monkeypatch.delenv("MFK_JOBS_DB", raising=False)
    monkeypatch.chdir(tmp_path)  # the default store would be ./.mfk/jobs/counter.sqlite3
    before = _scratch_dirs()
    with testing.serve(Counter) as client:
        job = client.post("/count/jobs", json={"n": 2, "steps": 2}).json()
        assert _scratch_dirs() - before
        result = client.get(f"/count/jobs/{job['id']}/result", params={"wait": 20})
        assert result.json() == {"total": 4, "steps": 2}
    assert _scratch_dirs() == before
    assert not (tmp_path / ".mfk").exists()


@pytest.mark.asyncio
async def test_aserve_too(monkeypatch):
    monkeypatch.delenv("MFK_JOBS_DB", raising=False)
    async with testing.aserve(Counter) as client:
        job = (await client.post("/count/jobs", json={"n": 3})).json()
        result = await client.get(f"/count/jobs/{job['id']}/result", params={"wait": 20})
        assert result.json() == {"total": 3, "steps": 1}
