"""``LocalJobs``: the jobs of a service served in this process (``mfk serve``, a mounted
router), kept in a SQLite file (``_jobs/sqlite.py``) and run by the service's own runtime.

A job goes through the same core as a request: ``ModelRuntime.run_batch`` (per-item failures,
out-of-memory splitting, the watchdog), with the job's ``run_timeout`` as its stall bound.
Up to ``max_batch_size`` queued jobs are claimed together and run as one batch, one batch at
a time; with a sync ``predict`` a running job holds the inference thread, so requests wait
behind it as behind any batch.

Around the runs, three loops on the event loop:

- upkeep (every second): writes the latest progress reports out, beats for the running jobs,
  notices a cancel made by another process sharing the file, puts back in the queue the jobs
  of runners that are gone, expires what is past its retention;
- webhooks: delivers each ended job's webhook (``_jobs/webhooks.py``), an attempt at a time,
  recording each in the store; retried with backoff, after a restart too. A slow receiver
  holds only its own delivery, never a job.

``stop`` puts the running jobs back in the queue (they run again at the next start); a
process that is killed leaves them ``running``, and the next one takes them back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from .._core.runtime import ModelRuntime
from .._core.spec import ServiceSpec
from .._core.state import LoadState
from .._core.wire import decode_outcome, decode_request, encode_outcome
from .._file import files_in
from .._metrics import JobMetrics
from ..exceptions import (
    ErrorCode,
    InputError,
    ModelStalled,
    PredictError,
    ServingError,
)
from . import progress as job_progress
from .options import JobOptions
from .service import (
    Submission,
    job_expired,
    job_not_found,
    public_job_error,
    request_digest,
)
from .sqlite import Claimed, NewJob, SqliteJobStore, WebhookDue, runner_name
from .status import JobInfo, JobProgress, JobState, WebhookState, WebhookStatus, job_links
from .webhooks import WebhookSigner, retry_delay, send_once, webhook_event

__all__ = ["STORE_ENV", "LocalJobs", "Serving", "store_path"]

logger = logging.getLogger("modal_fastapi_kit")

STORE_ENV = "MFK_JOBS_DB"  # the SQLite file of every service's jobs, where JobOptions has none
UPKEEP_SECONDS = 1.0
RECOVER_EVERY = 5  # upkeep rounds between two looks for jobs of runners that are gone
POLL_SECONDS = 1.0  # a waiting runner or long-poll looks at the file this often (other
# processes may share it)
WEBHOOKS_AT_ONCE = 16


def store_path(spec: ServiceSpec, options: JobOptions, fallback: str | Path | None = None) -> Path:
    """Where ``spec``'s jobs are kept: ``JobOptions.store``, else ``$MFK_JOBS_DB``, else
    ``fallback``, else ``.mfk/jobs/<service name>.sqlite3`` under the working directory."""
    chosen = options.store or os.environ.get(STORE_ENV) or fallback
    return Path(chosen) if chosen else Path(".mfk") / "jobs" / f"{spec.config.name}.sqlite3"


class Serving(Protocol):
    """What the runner needs of the backend it shares the model with (``LocalBackend``)."""

    @property
    def state(self) -> LoadState: ...

    @property
    def runtime(self) -> ModelRuntime: ...

    @property
    def max_batch_size(self) -> int:
        """The most jobs to claim at once: the batch cap now."""
        ...


class LocalJobs:
    """The ``JobService`` of a ``LocalBackend``."""

    def __init__(
        self, spec: ServiceSpec, backend: Serving, *, path: str | Path | None = None
    ) -> None:
        options = spec.config.jobs
        assert options is not None
        self.spec = spec
        self.options = options
        self.backend = backend
        self.store = SqliteJobStore(
            store_path(spec, options, path), spec.config.name, retention=options.retention
        )
        self.runner = runner_name()
        self.signer = WebhookSigner.from_environment(options)
        self.metrics = JobMetrics(spec.config.name) if spec.config.metrics else None
        self._pending = 0
        self._wake = asyncio.Event()  # a job was submitted
        self._hooks_wake = asyncio.Event()  # a job ended: its webhook may be due
        self._ended: dict[str, asyncio.Event] = {}  # job id -> set when it ends here
        self._calls: dict[str, job_progress.JobCall] = {}  # running job id -> its call
        self._reports: dict[str, JobProgress] = {}  # latest progress not yet written out
        self._batch: asyncio.Task[Any] | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._hooks: set[asyncio.Task[None]] = set()
        self._stopping = False

    @property
    def pending(self) -> int:
        return self._pending

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._loops:
            return
        await asyncio.to_thread(self.store.open)
        lost = await asyncio.to_thread(self.store.recover, self.runner, now=time.time())
        if lost:
            logger.warning(
                "%s: %d job(s) were running in a process that is gone; they run again: %s",
                self.spec.name,
                len(lost),
                ", ".join(lost),
            )
        await self._count()
        loop = asyncio.get_running_loop()
        name = self.spec.config.name
        self._loops = [
            loop.create_task(self._run_jobs(), name=f"modal_fastapi_kit.jobs[{name}]"),
            loop.create_task(self._upkeep(), name=f"modal_fastapi_kit.jobs.upkeep[{name}]"),
            loop.create_task(self._webhooks(), name=f"modal_fastapi_kit.jobs.webhooks[{name}]"),
        ]

    async def stop(self) -> None:
        """Stop running jobs: the running ones go back in the queue for the next start."""
        self._stopping = True
        tasks = [*self._loops, *self._hooks]
        if self._batch is not None:
            tasks.append(self._batch)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._loops = []
        if self.store._db is not None:
            await self._flush_progress()
            released = await asyncio.to_thread(self.store.release, self.runner)
            if released:
                logger.info("%s: %d running job(s) go back in the queue", self.spec.name, released)
            await asyncio.to_thread(self.store.close)

    # -- the JobService ------------------------------------------------------------------------

    async def submit(self, submission: Submission, wire: dict[str, Any]) -> tuple[JobInfo, bool]:
        if submission.webhook is not None and self.signer is None:
            raise InputError(
                "this service has no secret to sign webhooks with: set "
                f"${self.options.webhook_secret_env} to a whsec_... secret on the server, or "
                "submit without Webhook-URL and poll the job",
                status_code=422,
                code=ErrorCode.WEBHOOK_REFUSED,
            )
        enveloped = wire.keys() == {"request", "files"}
        # only a key's replay compares digests; a digest reads every file's bytes
        key = submission.idempotency_key
        digest = await asyncio.to_thread(request_digest, wire) if key else ""
        job = NewJob(
            id="job-" + os.urandom(16).hex(),
            owner=submission.owner,
            request_id=submission.request_id,
            jobs_url=submission.jobs_url,
            digest=digest,
            request=wire["request"] if enveloped else wire,
            files=wire["files"] if enveloped else (),
            idempotency_key=submission.idempotency_key,
            webhook_url=submission.webhook,
        )
        info, replayed = await asyncio.to_thread(
            self.store.add, job, max_pending=self.options.max_pending, now=time.time()
        )
        if not replayed:
            self._pending += 1
            if self.metrics is not None:
                self.metrics.submitted()
            self._wake.set()
        return info, replayed

    async def status(self, job_id: str, owner: str) -> JobInfo:
        info = await asyncio.to_thread(self.store.get, job_id, owner, now=time.time())
        if info is None:
            raise job_not_found(job_id)
        report = self._reports.get(job_id)
        if report is not None and info.state is JobState.RUNNING:
            info.progress = report  # fresher than the file
        return info

    async def result(
        self, job_id: str, owner: str, wait: float
    ) -> tuple[JobInfo, BaseModel | None]:
        loop = asyncio.get_running_loop()
        ends = loop.time() + max(0.0, wait)
        try:
            while True:
                info = await self.status(job_id, owner)
                left = ends - loop.time()
                if info.state.done or left <= 0:
                    break
                event = self._ended.setdefault(job_id, asyncio.Event())
                await _wait(event, min(left, POLL_SECONDS))
        finally:  # a job that ends in another process sharing the file leaves no event here
            self._ended.pop(job_id, None)
        if info.state is JobState.EXPIRED:
            raise job_expired(job_id, self.options.retention)
        if info.state is not JobState.SUCCEEDED:
            return info, None
        wire = await asyncio.to_thread(self.store.result, job_id)
        if wire is None:  # expired between the two reads
            raise job_expired(job_id, self.options.retention)
        value = await asyncio.to_thread(decode_outcome, self.spec.response_model, wire)
        if isinstance(value, ServingError):
            raise value
        return info, value

    async def cancel(self, job_id: str, owner: str) -> JobInfo:
        canceled = await asyncio.to_thread(self.store.cancel, job_id, owner, now=time.time())
        if canceled is None:
            raise job_not_found(job_id)
        info, was = canceled
        if not was.done:  # this call canceled it
            self._ended_here(job_id, info, ran=None)
            self._stop_running(job_id)
        return info

    # -- running -------------------------------------------------------------------------------

    async def _run_jobs(self) -> None:
        while True:
            runtime = await self._ready_runtime()
            try:
                claimed = await asyncio.to_thread(
                    self.store.claim, self.backend.max_batch_size, self.runner, now=time.time()
                )
                if claimed:
                    await self._run(runtime, claimed)
                    continue
            except Exception:  # the file (locked, full, gone): its jobs wait, none is lost
                logger.exception("%s: running jobs failed; trying again", self.spec.name)
            self._wake.clear()
            await _wait(self._wake, POLL_SECONDS)

    async def _ready_runtime(self) -> ModelRuntime:
        """The backend's runtime, once it is loaded and not stalled."""
        while True:
            runtime = self.backend.runtime
            if (
                self.backend.state is LoadState.READY
                and runtime.state is LoadState.READY
                and runtime.stalled is None
            ):
                return runtime
            await asyncio.sleep(0.1)

    async def _run(self, runtime: ModelRuntime, claimed: list[Claimed]) -> None:
        """Run one batch of claimed jobs and record how each ended."""
        model = self.spec.request_model
        items: list[Any] = []
        ids: list[str] = []
        began: dict[str, float] = {}
        for job in claimed:
            if self.metrics is not None:
                self.metrics.started(job.started_at - job.created_at)
            began[job.id] = job.started_at
            request = await asyncio.to_thread(decode_request, model, job.wire)
            if isinstance(request, ServingError):
                await self._finish(job.id, request, job.started_at)
                continue
            items.append(request)
            ids.append(job.id)
        if not items:
            return
        call = job_progress.JobCall(ids, self._record)
        for job_id in ids:
            self._calls[job_id] = call
        token = job_progress.CURRENT.set(call)  # the task runs in a copy of this context
        try:
            self._batch = asyncio.get_running_loop().create_task(
                runtime.run_batch(items, bound=self.options.run_timeout)
            )
        finally:
            job_progress.CURRENT.reset(token)
        returned = True
        try:
            outcomes: list[Any] = await self._batch
        except asyncio.CancelledError:
            if self._stopping:
                raise
            returned = False
            outcomes = [None] * len(items)  # every job of the batch was canceled
        except Exception as exc:  # run_batch answers per item; this is a last resort
            logger.error("%s: a batch of %d jobs failed", self.spec.name, len(ids), exc_info=exc)
            error = PredictError(f"the batch failed: {type(exc).__name__}")
            error.__cause__ = exc
            outcomes = [error] * len(items)
        finally:
            self._batch = None
            for job_id in ids:
                self._calls.pop(job_id, None)
        # a call found stuck, or canceled, may still be reading the files: GC closes those
        if returned and not any(isinstance(o, ModelStalled) for o in outcomes):
            for item in items:
                for file in files_in(item):
                    file.close()
        for job_id, outcome in zip(ids, outcomes, strict=True):
            if outcome is not None:
                await self._finish(job_id, outcome, began[job_id])

    async def _finish(self, job_id: str, outcome: Any, started: float) -> None:
        """Record ``outcome`` (a response model, or an error) for a running job."""
        report = self._reports.pop(job_id, None)
        if report is not None:  # its last report, as the status of the ended job says
            await asyncio.to_thread(self.store.progress, job_id, report)
        if isinstance(outcome, ServingError):
            info = await asyncio.to_thread(
                self.store.finish,
                job_id,
                error=public_job_error(
                    job_id, outcome, time.time() - started, self.options.run_timeout
                ),
                now=time.time(),
            )
        else:
            try:
                wire = await asyncio.to_thread(encode_outcome, outcome)
            except Exception as exc:  # a file answer that cannot be read
                logger.exception("job %s: its answer could not be kept", job_id)
                error = PredictError(f"the answer could not be kept: {type(exc).__name__}")
                info = await asyncio.to_thread(
                    self.store.finish, job_id, error=error, now=time.time()
                )
            else:
                info = await asyncio.to_thread(
                    self.store.finish, job_id, outcome=wire, now=time.time()
                )
            finally:
                for file in files_in(outcome):
                    file.close()
        if info is not None:
            self._ended_here(job_id, info, ran=time.time() - started)

    def _ended_here(self, job_id: str, info: JobInfo, *, ran: float | None) -> None:
        self._pending = max(0, self._pending - 1)
        if self.metrics is not None:
            self.metrics.ended(info.state.value, ran)
        event = self._ended.pop(job_id, None)
        if event is not None:
            event.set()
        if info.webhook is not None:
            self._hooks_wake.set()

    def _stop_running(self, job_id: str) -> None:
        """Stop a job this process is running: its call stops at the next progress report
        (a sync predict), or is cancelled once every job of its batch is (an async one)."""
        call = self._calls.get(job_id)
        if call is None:
            return
        call.cancel(job_id)
        self._reports.pop(job_id, None)
        if call.all_canceled and self._batch is not None:
            self._batch.cancel()

    def _record(self, job_id: str, report: JobProgress) -> None:
        """A progress report, from whatever thread the model runs on: kept for upkeep."""
        self._reports[job_id] = report

    # -- upkeep ----------------------------------------------------------------------------------

    async def _upkeep(self) -> None:
        rounds = 0
        expire_every = max(1, int(min(60.0, self.options.retention / 4) / UPKEEP_SECONDS))
        while True:
            await asyncio.sleep(UPKEEP_SECONDS)
            rounds += 1
            try:
                await self._flush_progress()
                running = list(self._calls)
                if running:
                    await asyncio.to_thread(self.store.beat, self.runner, running, now=time.time())
                    elsewhere = await asyncio.to_thread(self.store.canceled_among, running)
                    for job_id in elsewhere:
                        self._stop_running(job_id)
                if rounds % RECOVER_EVERY == 0:
                    lost = await asyncio.to_thread(self.store.recover, self.runner, now=time.time())
                    if lost:
                        self._wake.set()
                if rounds % expire_every == 0:
                    await asyncio.to_thread(self.store.expire, now=time.time())
                await self._count()
            except Exception:
                logger.exception("%s: the jobs' upkeep failed; trying again", self.spec.name)

    async def _flush_progress(self) -> None:
        """Write the latest reports out; each is dropped from memory only once the file has
        it and no newer one came meanwhile, so a status never shows an older report."""
        for job_id, report in list(self._reports.items()):
            await asyncio.to_thread(self.store.progress, job_id, report)
            if self._reports.get(job_id) is report:
                del self._reports[job_id]

    async def _count(self) -> None:
        self._pending = await asyncio.to_thread(self.store.pending)

    # -- webhooks --------------------------------------------------------------------------------

    async def _webhooks(self) -> None:
        loop = asyncio.get_running_loop()
        in_flight: set[str] = set()
        while True:
            self._hooks_wake.clear()
            try:
                due = await asyncio.to_thread(
                    self.store.webhooks_due, now=time.time(), limit=WEBHOOKS_AT_ONCE
                )
            except Exception:
                logger.exception("%s: reading the webhooks due failed", self.spec.name)
                due = []
            for hook in due:
                if hook.job_id in in_flight or len(in_flight) >= WEBHOOKS_AT_ONCE:
                    continue
                in_flight.add(hook.job_id)
                task = loop.create_task(self._deliver(hook))
                self._hooks.add(task)
                task.add_done_callback(self._hooks.discard)
                task.add_done_callback(functools.partial(_discard, in_flight, hook.job_id))
            await _wait(self._hooks_wake, POLL_SECONDS / 2)

    async def _deliver(self, hook: WebhookDue) -> None:
        """One attempt of ``hook``'s delivery, recorded in the store (tried again later when
        even that fails)."""
        try:
            await self._attempt(hook)
        except Exception:
            logger.exception("job %s: its webhook could not be attempted", hook.job_id)

    async def _attempt(self, hook: WebhookDue) -> None:
        info = await asyncio.to_thread(self.store.get, hook.job_id, hook.owner, now=time.time())
        why = None
        if self.signer is None:
            why = f"no webhook secret: ${self.options.webhook_secret_env} is not set"
        elif info is None or not info.state.done or info.state is JobState.EXPIRED:
            why = "the job expired before the webhook was delivered"
        if why is not None or info is None or self.signer is None:
            gone = WebhookStatus(
                url=hook.url, state="failed", attempts=hook.attempts, last_error=why
            )
            await asyncio.to_thread(self.store.webhook_attempted, hook.job_id, gone, None)
            return
        info.webhook = None  # the same body on every attempt
        msg_id, body = webhook_event(info.status(job_links(hook.jobs_url, hook.job_id)))
        attempt = await send_once(
            hook.url,
            msg_id,
            body,
            self.signer,
            allow_private=self.options.allow_private_webhooks,
        )
        attempts = hook.attempts + 1
        again = attempt.retry and attempts < self.options.webhook_attempts
        state: WebhookState = "delivered"
        if not attempt.delivered:
            state = "pending" if again else "failed"
            logger.warning(
                "job %s: webhook attempt %d to %s failed: %s",
                hook.job_id,
                attempts,
                hook.url,
                attempt.error,
            )
        status = WebhookStatus(
            url=hook.url,
            state=state,
            attempts=attempts,
            last_status=attempt.status,
            last_error=attempt.error,
        )
        next_at = None
        if again:
            next_at = time.time() + retry_delay(attempts, self.options.webhook_backoff)
        await asyncio.to_thread(self.store.webhook_attempted, hook.job_id, status, next_at)


def _discard(names: set[str], name: str, _: object) -> None:
    names.discard(name)


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Until ``event`` is set, at most ``seconds``."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
