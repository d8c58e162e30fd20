"""``SqliteJobStore``: one service's jobs in one SQLite file, durable across a killed process.

Every change is one transaction, committed to disk before it returns (WAL journal,
``synchronous=FULL``), so a process killed at any point leaves each job in the state of its
last change: nothing a client was told is lost. What a client can observe follows from how
the state changes:

- a job goes ``queued -> running`` when a runner claims it (``claim``), and from ``running``
  to ``succeeded`` / ``failed`` only with a runner's result (``finish``, guarded by the
  state: a job canceled meanwhile stays canceled, a finished one is never finished again);
- a runner that is gone leaves its jobs ``running`` with its name on them; ``recover`` puts
  them back in the queue (at once for a process of this host that no longer exists, else when
  its heartbeat is older than the lease), and they run again: each job reaches one terminal
  state, once, as far as a client can see;
- a finished job past its retention becomes ``expired``: its request, result and files are
  deleted and a small tombstone row is kept (``TOMBSTONE_SECONDS``) so that its id answers
  410, not 404.

The request (its JSON, its files as blobs) is kept until the job ends; the result until it
expires. Several processes may share the file (servers on one volume): claims take SQLite's
write lock, so no job is claimed twice.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..exceptions import ServingError
from .service import idempotency_reused, too_many_jobs
from .status import JobError, JobInfo, JobProgress, JobState, WebhookState, WebhookStatus

__all__ = [
    "LEASE_SECONDS",
    "TOMBSTONE_SECONDS",
    "Claimed",
    "NewJob",
    "SqliteJobStore",
    "WebhookDue",
    "runner_name",
]

LEASE_SECONDS = 30.0  # a runner that has not beaten for this long is taken for dead
TOMBSTONE_SECONDS = 30 * 86_400.0  # how long an expired job's id still answers 410
_ACTIVE = (JobState.QUEUED.value, JobState.RUNNING.value)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    service TEXT NOT NULL,
    owner TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    runner TEXT,
    heartbeat_at REAL,
    progress REAL,
    progress_message TEXT,
    error_code TEXT,
    error_status INTEGER,
    error_detail TEXT,
    request_id TEXT,
    jobs_url TEXT NOT NULL,
    idempotency_key TEXT,
    digest TEXT NOT NULL,
    request TEXT,
    result TEXT,
    webhook_url TEXT,
    webhook_state TEXT,
    webhook_attempts INTEGER NOT NULL DEFAULT 0,
    webhook_status INTEGER,
    webhook_error TEXT,
    webhook_next_at REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_idempotency_key
    ON jobs (service, owner, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (service, state, created_at);
CREATE TABLE IF NOT EXISTS job_files (
    job_id TEXT NOT NULL,
    role TEXT NOT NULL,
    position INTEGER NOT NULL,
    data BLOB NOT NULL,
    content_type TEXT NOT NULL,
    filename TEXT,
    PRIMARY KEY (job_id, role, position)
);
"""

WireFile = tuple[bytes, str, "str | None"]


@dataclass(frozen=True, slots=True)
class NewJob:
    """What ``add`` stores for a submission."""

    id: str
    owner: str
    request_id: str
    jobs_url: str
    digest: str
    request: Any  # the request's JSON (``_core.wire``, file markers included)
    files: Sequence[WireFile]
    idempotency_key: str | None = None
    webhook_url: str | None = None


@dataclass(frozen=True, slots=True)
class Claimed:
    """A job a runner took: its id and its request in wire form."""

    id: str
    wire: dict[str, Any]
    created_at: float
    started_at: float


@dataclass(frozen=True, slots=True)
class WebhookDue:
    """A webhook whose next attempt is due."""

    job_id: str
    owner: str
    url: str
    attempts: int
    jobs_url: str


def runner_name() -> str:
    """This process's name on the jobs it runs: host, pid and a random part (a pid is
    reused; the random part tells a new process from the one that had it)."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"


class SqliteJobStore:
    """One service's jobs in the SQLite file at ``path`` (created with its directory).

    The methods are blocking and thread-safe; call them off the event loop.
    """

    def __init__(self, path: str | Path, service: str, *, retention: float) -> None:
        self.path = Path(path)
        self.service = service
        self.retention = retention
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        """Open (or create) the file and its tables."""
        if self._db is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        db.executescript(_SCHEMA)
        self._db = db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (SQLite's write lock from its first statement)."""
        with self._lock:
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"the job store {self.path} is not open")
        return self._db

    # -- submitting ----------------------------------------------------------------------------

    def add(self, job: NewJob, *, max_pending: int, now: float) -> tuple[JobInfo, bool]:
        """Store ``job`` queued; ``(job, replayed)``. The same ``idempotency_key`` of the same
        owner answers the job it made before (replayed) when the digest is the same and
        raises ``idempotency_reused`` when not; ``too_many_jobs`` past ``max_pending``."""
        with self._write() as db:
            if job.idempotency_key is not None:
                row = db.execute(
                    f"SELECT {_COLUMNS}, digest FROM jobs WHERE service = ? AND owner = ? "
                    "AND idempotency_key = ?",
                    (self.service, job.owner, job.idempotency_key),
                ).fetchone()
                if row is not None:
                    if row[-1] != job.digest:
                        raise idempotency_reused(job.idempotency_key)
                    return self._info(row[:-1], now), True
            (pending,) = db.execute(
                "SELECT count(*) FROM jobs WHERE service = ? AND state IN (?, ?)",
                (self.service, *_ACTIVE),
            ).fetchone()
            if pending >= max_pending:
                raise too_many_jobs(max_pending)
            db.execute(
                "INSERT INTO jobs (id, service, owner, state, created_at, request_id, jobs_url, "
                "idempotency_key, digest, request, webhook_url, webhook_state) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    self.service,
                    job.owner,
                    JobState.QUEUED.value,
                    now,
                    job.request_id,
                    job.jobs_url,
                    job.idempotency_key,
                    job.digest,
                    json.dumps(job.request, separators=(",", ":")),
                    job.webhook_url,
                    "pending" if job.webhook_url else None,
                ),
            )
            _put_files(db, job.id, "request", job.files)
            row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job.id,)).fetchone()
        return self._info(row, now), False

    # -- reading -------------------------------------------------------------------------------

    def get(self, job_id: str, owner: str, *, now: float) -> JobInfo | None:
        """The job, if it is ``owner``'s (an expired one as ``expired``)."""
        with self._lock:
            row = (
                self._connection()
                .execute(
                    f"SELECT {_COLUMNS} FROM jobs WHERE id = ? AND service = ? AND owner = ?",
                    (job_id, self.service, owner),
                )
                .fetchone()
            )
        return None if row is None else self._info(row, now)

    def result(self, job_id: str) -> dict[str, Any] | None:
        """A succeeded job's result as ``_core.wire`` encodes an outcome (``{"ok", "files"}``),
        or None once it is gone."""
        with self._lock:
            db = self._connection()
            row = db.execute("SELECT result FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row[0] is None:
                return None
            files = _get_files(db, job_id, "result")
        return {"ok": json.loads(row[0]), "files": files}

    def pending(self) -> int:
        """Jobs queued or running."""
        with self._lock:
            (count,) = (
                self._connection()
                .execute(
                    "SELECT count(*) FROM jobs WHERE service = ? AND state IN (?, ?)",
                    (self.service, *_ACTIVE),
                )
                .fetchone()
            )
        return int(count)

    def canceled_among(self, job_ids: Sequence[str]) -> set[str]:
        """Which of ``job_ids`` are canceled (by any process sharing the file)."""
        if not job_ids:
            return set()
        marks = ",".join("?" * len(job_ids))
        with self._lock:
            rows = (
                self._connection()
                .execute(
                    f"SELECT id FROM jobs WHERE state = ? AND id IN ({marks})",
                    (JobState.CANCELED.value, *job_ids),
                )
                .fetchall()
            )
        return {row[0] for row in rows}

    # -- running -------------------------------------------------------------------------------

    def claim(self, limit: int, runner: str, *, now: float) -> list[Claimed]:
        """Take up to ``limit`` queued jobs, oldest first, for ``runner``: they are ``running``
        from now, with one more attempt."""
        with self._write() as db:
            rows = db.execute(
                "SELECT id, request, created_at FROM jobs WHERE service = ? AND state = ? "
                "ORDER BY created_at, rowid LIMIT ?",
                (self.service, JobState.QUEUED.value, limit),
            ).fetchall()
            claimed = []
            for job_id, request, created_at in rows:
                db.execute(
                    "UPDATE jobs SET state = ?, started_at = ?, attempts = attempts + 1, "
                    "runner = ?, heartbeat_at = ?, progress = NULL, progress_message = NULL "
                    "WHERE id = ?",
                    (JobState.RUNNING.value, now, runner, now, job_id),
                )
                wire = {"request": json.loads(request), "files": _get_files(db, job_id, "request")}
                claimed.append(Claimed(job_id, wire, created_at, now))
        return claimed

    def beat(self, runner: str, job_ids: Sequence[str], *, now: float) -> None:
        """``runner`` is alive and still running ``job_ids``."""
        if not job_ids:
            return
        marks = ",".join("?" * len(job_ids))
        with self._write() as db:
            db.execute(
                f"UPDATE jobs SET heartbeat_at = ? WHERE runner = ? AND state = ? "
                f"AND id IN ({marks})",
                (now, runner, JobState.RUNNING.value, *job_ids),
            )

    def progress(self, job_id: str, progress: JobProgress) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET progress = ?, progress_message = ? WHERE id = ? AND state = ?",
                (progress.fraction, progress.message, job_id, JobState.RUNNING.value),
            )

    def finish(
        self,
        job_id: str,
        *,
        outcome: dict[str, Any] | None = None,
        error: ServingError | None = None,
        now: float,
    ) -> JobInfo | None:
        """End a running job with its result (``{"ok", "files"}``) or its ``error``; the job,
        or None when it was not running any more (canceled meanwhile)."""
        with self._write() as db:
            if error is None:
                assert outcome is not None
                changed = db.execute(
                    "UPDATE jobs SET state = ?, finished_at = ?, result = ?, request = NULL, "
                    "webhook_next_at = ? WHERE id = ? AND state = ?",
                    (
                        JobState.SUCCEEDED.value,
                        now,
                        json.dumps(outcome["ok"], separators=(",", ":")),
                        now,
                        job_id,
                        JobState.RUNNING.value,
                    ),
                ).rowcount
                if changed:
                    _put_files(db, job_id, "result", outcome.get("files", ()))
            else:
                changed = db.execute(
                    "UPDATE jobs SET state = ?, finished_at = ?, error_code = ?, "
                    "error_status = ?, error_detail = ?, request = NULL, webhook_next_at = ? "
                    "WHERE id = ? AND state = ?",
                    (
                        JobState.FAILED.value,
                        now,
                        error.code.value,
                        error.status_code,
                        error.detail,
                        now,
                        job_id,
                        JobState.RUNNING.value,
                    ),
                ).rowcount
            if not changed:
                return None
            db.execute("DELETE FROM job_files WHERE job_id = ? AND role = 'request'", (job_id,))
            row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._info(row, now)

    def cancel(self, job_id: str, owner: str, *, now: float) -> tuple[JobInfo, JobState] | None:
        """Cancel ``owner``'s job if it has not ended; ``(job, its state before)``, or None
        for a job that is not ``owner``'s. A job that had ended is answered as it is."""
        with self._write() as db:
            row = db.execute(
                "SELECT state FROM jobs WHERE id = ? AND service = ? AND owner = ?",
                (job_id, self.service, owner),
            ).fetchone()
            if row is None:
                return None
            was = row[0]
            if was in _ACTIVE:
                db.execute(
                    "UPDATE jobs SET state = ?, finished_at = ?, request = NULL, "
                    "webhook_next_at = ? WHERE id = ?",
                    (JobState.CANCELED.value, now, now, job_id),
                )
                db.execute("DELETE FROM job_files WHERE job_id = ? AND role = 'request'", (job_id,))
            row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._info(row, now), JobState(was)

    def release(self, runner: str) -> int:
        """Put ``runner``'s running jobs back in the queue (it is stopping); how many."""
        with self._write() as db:
            return db.execute(
                "UPDATE jobs SET state = ?, runner = NULL, heartbeat_at = NULL "
                "WHERE service = ? AND runner = ? AND state = ?",
                (JobState.QUEUED.value, self.service, runner, JobState.RUNNING.value),
            ).rowcount

    def recover(self, runner: str, *, now: float, alive: Any = None) -> list[str]:
        """Put back in the queue the running jobs of runners that are gone (see the module's
        docstring); their ids. ``alive(pid)`` says whether a process of this host exists."""
        host = socket.gethostname()
        alive = alive or _process_exists
        with self._write() as db:
            rows = db.execute(
                "SELECT id, runner, heartbeat_at FROM jobs WHERE service = ? AND state = ?",
                (self.service, JobState.RUNNING.value),
            ).fetchall()
            lost = [
                job_id
                for job_id, owner_runner, beat in rows
                if owner_runner != runner and _gone(owner_runner, beat, host, now, alive)
            ]
            for job_id in lost:
                db.execute(
                    "UPDATE jobs SET state = ?, runner = NULL, heartbeat_at = NULL "
                    "WHERE id = ? AND state = ?",
                    (JobState.QUEUED.value, job_id, JobState.RUNNING.value),
                )
        return lost

    def expire(self, *, now: float) -> int:
        """Expire the jobs that ended more than ``retention`` ago (their data deleted, a
        tombstone kept), and drop tombstones past ``TOMBSTONE_SECONDS``; how many expired."""
        with self._write() as db:
            ids = [
                row[0]
                for row in db.execute(
                    "SELECT id FROM jobs WHERE service = ? AND finished_at IS NOT NULL "
                    "AND state != ? AND finished_at < ?",
                    (self.service, JobState.EXPIRED.value, now - self.retention),
                ).fetchall()
            ]
            for job_id in ids:
                db.execute(
                    "UPDATE jobs SET state = ?, request = NULL, result = NULL, "
                    "progress_message = NULL WHERE id = ?",
                    (JobState.EXPIRED.value, job_id),
                )
                db.execute(  # a delivery still being tried ends with its job
                    "UPDATE jobs SET webhook_state = 'failed', webhook_next_at = NULL, "
                    "webhook_error = 'the job expired before the webhook was delivered' "
                    "WHERE id = ? AND webhook_state = 'pending'",
                    (job_id,),
                )
                db.execute("DELETE FROM job_files WHERE job_id = ?", (job_id,))
            db.execute(
                "DELETE FROM jobs WHERE service = ? AND state = ? AND finished_at < ?",
                (self.service, JobState.EXPIRED.value, now - self.retention - TOMBSTONE_SECONDS),
            )
        return len(ids)

    # -- webhooks ------------------------------------------------------------------------------

    def webhooks_due(self, *, now: float, limit: int) -> list[WebhookDue]:
        """Ended jobs whose webhook's next attempt is due."""
        with self._lock:
            rows = (
                self._connection()
                .execute(
                    "SELECT id, owner, webhook_url, webhook_attempts, jobs_url FROM jobs "
                    "WHERE service = ? AND webhook_state = 'pending' AND finished_at IS NOT NULL "
                    "AND webhook_next_at <= ? ORDER BY webhook_next_at LIMIT ?",
                    (self.service, now, limit),
                )
                .fetchall()
            )
        return [WebhookDue(*row) for row in rows]

    def webhook_attempted(self, job_id: str, status: WebhookStatus, next_at: float | None) -> None:
        """Record an attempt's outcome; ``next_at`` when another is due."""
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET webhook_state = ?, webhook_attempts = ?, webhook_status = ?, "
                "webhook_error = ?, webhook_next_at = ? WHERE id = ?",
                (
                    status.state,
                    status.attempts,
                    status.last_status,
                    status.last_error,
                    next_at,
                    job_id,
                ),
            )

    # -- rows ----------------------------------------------------------------------------------

    def _info(self, row: Sequence[Any], now: float) -> JobInfo:
        (
            job_id,
            state,
            created_at,
            started_at,
            finished_at,
            attempts,
            fraction,
            message,
            code,
            status,
            detail,
            request_id,
            webhook_url,
            webhook_state,
            webhook_attempts,
            webhook_status,
            webhook_error,
        ) = row
        expires_at = None if finished_at is None else finished_at + self.retention
        job_state = JobState(state)
        if expires_at is not None and now >= expires_at:
            job_state = JobState.EXPIRED  # before the purge gets to it
        return JobInfo(
            id=job_id,
            state=job_state,
            created_at=created_at,
            started_at=started_at,
            finished_at=finished_at,
            expires_at=expires_at,
            attempts=attempts,
            progress=None if fraction is None else JobProgress(fraction=fraction, message=message),
            error=None if code is None else JobError(detail=detail, code=code, status=status),
            webhook=None
            if webhook_url is None
            else WebhookStatus(
                url=webhook_url,
                state=_webhook_state(webhook_state),
                attempts=webhook_attempts,
                last_status=webhook_status,
                last_error=webhook_error,
            ),
            request_id=request_id,
        )


_COLUMNS = (
    "id, state, created_at, started_at, finished_at, attempts, progress, progress_message, "
    "error_code, error_status, error_detail, request_id, webhook_url, webhook_state, "
    "webhook_attempts, webhook_status, webhook_error"
)


def _webhook_state(value: str | None) -> WebhookState:
    if value == "delivered":
        return "delivered"
    return "failed" if value == "failed" else "pending"


def _put_files(
    db: sqlite3.Connection, job_id: str, role: str, files: Sequence[Sequence[Any]]
) -> None:
    db.executemany(
        "INSERT INTO job_files (job_id, role, position, data, content_type, filename) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [
            (job_id, role, position, bytes(data), content_type, filename)
            for position, (data, content_type, filename) in enumerate(files)
        ],
    )


def _get_files(db: sqlite3.Connection, job_id: str, role: str) -> list[WireFile]:
    rows = db.execute(
        "SELECT data, content_type, filename FROM job_files WHERE job_id = ? AND role = ? "
        "ORDER BY position",
        (job_id, role),
    ).fetchall()
    return [(bytes(data), content_type, filename) for data, content_type, filename in rows]


def _gone(runner: str | None, beat: float | None, host: str, now: float, alive: Any) -> bool:
    """Whether the runner named ``runner`` is gone: a process of this host that does not
    exist, or any runner whose last heartbeat is older than the lease."""
    if runner is None or beat is None:
        return True
    name, _, rest = runner.partition(":")
    pid, _, _ = rest.partition(":")
    if name == host and pid.isdigit():
        mine = int(pid) == os.getpid()  # this process's pid on another runner: a dead one's
        if mine or not alive(int(pid)):
            return True
    return now - beat > LEASE_SECONDS


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
