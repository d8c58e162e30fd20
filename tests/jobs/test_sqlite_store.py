"""``SqliteJobStore``: the state changes a client can observe, on a real SQLite file."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from modal_fastapi_kit._jobs.sqlite import LEASE_SECONDS, NewJob, SqliteJobStore, runner_name
from modal_fastapi_kit._jobs.status import JobState, WebhookStatus
from modal_fastapi_kit.exceptions import ErrorCode, InputError, PredictError, QueueFullError

T0 = 1_800_000_000.0


def store(tmp_path: Path, name: str = "svc", retention: float = 100.0) -> SqliteJobStore:
    s = SqliteJobStore(tmp_path / "jobs.sqlite3", name, retention=retention)
    s.open()
    return s


def new(job_id: str, owner: str = "o", key: str | None = None, digest: str = "d", **more) -> NewJob:
    return NewJob(
        id=job_id,
        owner=owner,
        request_id="r",
        jobs_url="http://h/x/jobs",
        digest=digest,
        request={"x": job_id},
        files=[(b"\x00bytes", "application/octet-stream", "f.bin")],
        idempotency_key=key,
        **more,
    )


def test_a_claimed_job_runs_once_and_its_result_and_files_come_back(tmp_path):
    s = store(tmp_path)
    info, replayed = s.add(new("j1"), max_pending=10, now=T0)
    assert (info.state, replayed, info.attempts) == (JobState.QUEUED, False, 0)
    (claimed,) = s.claim(5, "r1", now=T0 + 1)
    assert claimed.wire == {
        "request": {"x": "j1"},
        "files": [(b"\x00bytes", "application/octet-stream", "f.bin")],
    }
    assert s.claim(5, "r1", now=T0 + 1) == []
    done = s.finish("j1", outcome={"ok": {"y": 1}, "files": [(b"npy", "x/y", None)]}, now=T0 + 2)
    assert done is not None and done.state is JobState.SUCCEEDED and done.attempts == 1
    assert s.result("j1") == {"ok": {"y": 1}, "files": [(b"npy", "x/y", None)]}
    assert s.finish("j1", error=PredictError("late"), now=T0 + 3) is None  # ended once
    assert s.get("j1", "o", now=T0 + 3).state is JobState.SUCCEEDED


def test_a_job_canceled_while_running_keeps_canceled_when_its_run_ends(tmp_path):
    s = store(tmp_path)
    s.add(new("j1"), max_pending=10, now=T0)
    s.claim(1, "r1", now=T0)
    info, before = s.cancel("j1", "o", now=T0 + 1)
    assert info.state is JobState.CANCELED and before is JobState.RUNNING
    assert s.finish("j1", outcome={"ok": {}, "files": []}, now=T0 + 2) is None
    again, before = s.cancel("j1", "o", now=T0 + 3)
    assert again.state is JobState.CANCELED and before is JobState.CANCELED
    assert again.finished_at == T0 + 1
    assert s.cancel("j1", "someone else", now=T0) is None
    assert s.canceled_among(["j1", "nope"]) == {"j1"}


def test_idempotency_keys_are_per_owner_and_per_body(tmp_path):
    s = store(tmp_path)
    s.add(new("j1", key="k"), max_pending=10, now=T0)
    again, replayed = s.add(new("j2", key="k"), max_pending=10, now=T0)
    assert replayed and again.id == "j1"
    with pytest.raises(InputError) as refused:
        s.add(new("j3", key="k", digest="other"), max_pending=10, now=T0)
    assert refused.value.code is ErrorCode.IDEMPOTENCY_KEY_REUSED
    theirs, replayed = s.add(new("j4", owner="p", key="k"), max_pending=10, now=T0)
    assert not replayed and theirs.id == "j4"


def test_max_pending_counts_queued_and_running_jobs_only(tmp_path):
    s = store(tmp_path)
    s.add(new("j1"), max_pending=2, now=T0)
    s.add(new("j2"), max_pending=2, now=T0)
    with pytest.raises(QueueFullError) as full:
        s.add(new("j3"), max_pending=2, now=T0)
    assert full.value.code is ErrorCode.TOO_MANY_JOBS
    s.claim(1, "r", now=T0)
    s.finish("j1", error=PredictError("x"), now=T0)
    s.add(new("j3"), max_pending=2, now=T0)
    assert s.pending() == 2


def test_recover_takes_back_the_jobs_of_a_dead_process_at_once_and_of_others_after_the_lease(
    tmp_path,
):
    s = store(tmp_path)
    for job_id in ("dead", "silent", "alive"):
        s.add(new(job_id), max_pending=10, now=T0)
    host = os.uname().nodename
    s.claim(1, f"{host}:999999:aa", now=T0)  # a pid of this host that does not exist
    s.claim(1, "elsewhere:123:bb", now=T0)  # another host: only its heartbeat tells
    s.claim(1, f"{host}:{os.getppid()}:cc", now=T0)  # a live process of this host
    me = runner_name()
    assert s.recover(me, now=T0 + 1) == ["dead"]
    assert s.recover(me, now=T0 + LEASE_SECONDS + 1) == ["silent", "alive"]
    assert [c.id for c in s.claim(5, me, now=T0 + 40)] == ["dead", "silent", "alive"]
    assert s.get("dead", "o", now=T0).attempts == 2


def test_two_processes_sharing_the_file_never_claim_the_same_job(tmp_path):
    first = store(tmp_path)
    second = store(tmp_path)
    for n in range(200):
        first.add(new(f"j{n}"), max_pending=1000, now=T0 + n)
    got: dict[str, list[str]] = {"a": [], "b": []}

    def drain(s: SqliteJobStore, name: str) -> None:
        while claimed := s.claim(3, name, now=T0):
            got[name] += [c.id for c in claimed]

    threads = [
        threading.Thread(target=drain, args=(first, "a")),
        threading.Thread(target=drain, args=(second, "b")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(got["a"] + got["b"]) == sorted(f"j{n}" for n in range(200))
    assert not set(got["a"]) & set(got["b"])


def test_expiry_deletes_the_data_and_keeps_a_tombstone(tmp_path):
    s = store(tmp_path, retention=10)
    s.add(new("j1"), max_pending=10, now=T0)
    s.claim(1, "r", now=T0)
    s.finish("j1", outcome={"ok": {"y": 1}, "files": [(b"x", "t/t", None)]}, now=T0)
    assert s.get("j1", "o", now=T0 + 9).state is JobState.SUCCEEDED
    assert s.get("j1", "o", now=T0 + 10).state is JobState.EXPIRED  # before the purge
    assert s.expire(now=T0 + 11) == 1
    assert s.result("j1") is None
    assert s.get("j1", "o", now=T0 + 11).state is JobState.EXPIRED
    (files,) = s._connection().execute("SELECT count(*) FROM job_files").fetchone()
    assert files == 0
    s.expire(now=T0 + 10 + 31 * 86_400)
    assert s.get("j1", "o", now=T0 + 31 * 86_400) is None


def test_webhook_attempts_are_kept_until_delivered_or_spent(tmp_path):
    s = store(tmp_path)
    s.add(new("j1", webhook_url="https://hooks.example/x"), max_pending=10, now=T0)
    assert s.webhooks_due(now=T0 + 5, limit=10) == []  # not before the job ends
    s.claim(1, "r", now=T0)
    s.finish("j1", outcome={"ok": {}, "files": []}, now=T0 + 1)
    (due,) = s.webhooks_due(now=T0 + 1, limit=10)
    assert (due.url, due.attempts, due.jobs_url) == (
        "https://hooks.example/x",
        0,
        "http://h/x/jobs",
    )
    failed = WebhookStatus(url=due.url, state="pending", attempts=1, last_status=500)
    s.webhook_attempted("j1", failed, next_at=T0 + 10)
    assert s.webhooks_due(now=T0 + 5, limit=10) == []
    assert s.webhooks_due(now=T0 + 10, limit=10)[0].attempts == 1
    s.webhook_attempted("j1", failed.model_copy(update={"state": "delivered", "attempts": 2}), None)
    assert s.webhooks_due(now=T0 + 100, limit=10) == []
    webhook = s.get("j1", "o", now=T0).webhook
    assert webhook is not None and (webhook.state, webhook.attempts) == ("delivered", 2)


def test_one_file_keeps_several_services_apart(tmp_path):
    a, b = store(tmp_path, "a"), store(tmp_path, "b")
    a.add(new("j1"), max_pending=1, now=T0)
    b.add(new("j2"), max_pending=1, now=T0)  # a's job does not count against b
    assert [c.id for c in b.claim(5, "r", now=T0)] == ["j2"]
    assert b.get("j1", "o", now=T0) is None


def test_a_webhook_still_pending_when_its_job_expires_ends_failed(tmp_path):
    s = store(tmp_path, retention=10)
    s.add(new("j1", webhook_url="https://hooks.example/x"), max_pending=10, now=T0)
    s.claim(1, "r", now=T0)
    s.finish("j1", outcome={"ok": {}, "files": []}, now=T0)
    assert s.webhooks_due(now=T0, limit=10)  # the receiver is down: it stays due
    s.expire(now=T0 + 11)
    assert s.webhooks_due(now=T0 + 12, limit=10) == []  # no more tries, none blocking others
    webhook = s.get("j1", "o", now=T0 + 12).webhook
    assert webhook is not None and webhook.state == "failed"
    assert webhook.last_error == "the job expired before the webhook was delivered"
