"""`mfk serve` killed with SIGKILL while jobs are queued and running loses none of them: after a
restart on the same file they run (again), each ends once, and every result can be read."""

from __future__ import annotations

import os
import signal
import time
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest

from .._servers import BIN, Process, free_port, running, wait_ready
from ..services.jobbers import RUNS_ENV

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

TARGET = "tests/services/jobbers.py:Counter"


def serve(port: int, env: dict[str, str]) -> AbstractContextManager[Process]:
    return running([str(BIN / "mfk"), "serve", TARGET, "--port", str(port)], env=env)


def test_a_killed_server_loses_no_job_and_each_ends_once(tmp_path: Path):
    env = {"MFK_JOBS_DB": str(tmp_path / "jobs.sqlite3"), RUNS_ENV: str(tmp_path / "runs.txt")}
    port = free_port()
    with serve(port, env) as first:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)
        with httpx.Client(base_url=base, timeout=30) as client:
            done = client.post(
                "/count/jobs", json={"n": 7}, headers={"idempotency-key": "before"}
            ).json()
            assert client.get(f"/count/jobs/{done['id']}/result", params={"wait": 20}).json() == {
                "total": 7,
                "steps": 1,
            }
            long = client.post("/count/jobs", json={"n": 1, "steps": 40, "delay": 0.1}).json()
            queued = [
                client.post("/count/jobs", json={"n": n, "steps": 3, "delay": 0.05}).json()
                for n in (2, 3)
            ]
            deadline = time.monotonic() + 20
            while True:  # the long job is running and has reported progress
                status = client.get(f"/count/jobs/{long['id']}").json()
                if status["state"] == "running" and status["progress"] is not None:
                    break
                assert time.monotonic() < deadline, status
                time.sleep(0.05)
        os.killpg(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)
    assert (tmp_path / "runs.txt").read_text().split() == ["7", "1"]

    port = free_port()
    with serve(port, env) as second:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)
        with httpx.Client(base_url=base, timeout=30) as client:
            seen: dict[str, list[str]] = {job["id"]: [] for job in [long, *queued]}
            deadline = time.monotonic() + 60
            while not all(states and states[-1] == "succeeded" for states in seen.values()):
                assert time.monotonic() < deadline, seen
                for job_id, states in seen.items():
                    state = client.get(f"/count/jobs/{job_id}").json()["state"]
                    if not states or states[-1] != state:
                        states.append(state)
                time.sleep(0.02)
            for states in seen.values():  # never an end before the one it has now
                assert states.count("succeeded") == 1 and "failed" not in states, seen
            results = {job_id: client.get(f"/count/jobs/{job_id}/result").json() for job_id in seen}
            assert results == {
                long["id"]: {"total": 40, "steps": 40},
                queued[0]["id"]: {"total": 6, "steps": 3},
                queued[1]["id"]: {"total": 9, "steps": 3},
            }
            attempts = {
                job_id: client.get(f"/count/jobs/{job_id}").json()["attempts"] for job_id in seen
            }
            assert attempts == {long["id"]: 2, queued[0]["id"]: 1, queued[1]["id"]: 1}
            before = client.get(f"/count/jobs/{done['id']}/result")
            assert before.json() == {"total": 7, "steps": 1}  # kept across the kill
            again = client.post("/count/jobs", json={"n": 7}, headers={"idempotency-key": "before"})
            assert again.json()["id"] == done["id"]  # and so is its idempotency key
        assert second.proc.poll() is None
    runs = (tmp_path / "runs.txt").read_text().split()
    assert sorted(runs) == ["1", "1", "2", "3", "7"]  # the killed one ran again, nothing else
    assert "1 job(s) were running in a process that is gone" in second.output


def test_a_server_stopped_with_sigterm_puts_its_running_job_back_in_the_queue(tmp_path: Path):
    env = {"MFK_JOBS_DB": str(tmp_path / "jobs.sqlite3"), RUNS_ENV: str(tmp_path / "runs.txt")}
    port = free_port()
    with serve(port, env) as first:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)
        with httpx.Client(base_url=base, timeout=30) as client:
            job = client.post("/count/jobs", json={"n": 4, "steps": 20, "delay": 0.1}).json()
            deadline = time.monotonic() + 20
            while client.get(f"/count/jobs/{job['id']}").json()["state"] != "running":
                assert time.monotonic() < deadline
                time.sleep(0.05)
        os.killpg(first.proc.pid, signal.SIGTERM)
        first.proc.wait(30)
    assert "running job(s) go back in the queue" in first.output
    port = free_port()
    with serve(port, env):
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)
        with httpx.Client(base_url=base, timeout=30) as client:
            result = client.get(f"/count/jobs/{job['id']}/result", params={"wait": 30})
            assert result.json() == {"total": 80, "steps": 20}
            assert client.get(f"/count/jobs/{job['id']}").json()["attempts"] == 2
