"""Jobs from the client: submit now, collect the answer later, past Modal's 150 s.

    job = client.submit(EmbedIn(text="..."))   # POST <route>/jobs: 202, a handle
    print(job.id, job.status().state)          # GET <route>/jobs/<id>
    answer = job.result(timeout=600)           # long-polls GET <route>/jobs/<id>/result
    client.job(job.id).cancel()                # a handle from an id alone, anywhere

What both handles share is here as decisions: ``JobRequest`` is one request of the job
routes, with the retries of any call; ``ResultWait`` says when to poll again and when to
give up. The blocking and the asyncio handle are thin loops around them, sending through
their client (``Sender`` / ``AsyncSender``).

Every job request is retried on unsafe errors too (500, 502, 504, a broken connection):
a submission carries an ``Idempotency-Key`` (one is made when none is given), so the service
answers a retry with the job it made; status and result only read; cancel is idempotent.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Generic, Protocol, cast
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from .._jobs.status import JobState, JobStatus
from .._protocol import IDEMPOTENCY_HEADER, WEBHOOK_HEADER, ResponseT, idempotency_key_ok
from ..exceptions import ERROR_CODES, Retry, ServingError, UpstreamError
from .answers import error_from_answer, retry_after_seconds
from .attempts import FIRST_BACKOFF, MAX_BACKOFF, Attempts
from .files import Body, aread_file_answer, read_file_answer
from .options import ClientOptions

__all__ = [
    "EARLY_PAUSE",
    "MAX_POLL",
    "POLL_MARGIN",
    "AsyncJobHandle",
    "AsyncSender",
    "JobHandle",
    "JobRequest",
    "ResultWait",
    "Sender",
    "read_status",
    "submission",
]

MAX_POLL = 60.0  # the longest ?wait= one poll of the result route asks for
POLL_MARGIN = 10.0  # seconds over a poll's wait that the client waits for its answer
EARLY_PAUSE = 1.0  # seconds between polls that the service answered at once, without Retry-After


class Sender(Protocol):
    """What a blocking handle needs of its client (``ServiceClient``)."""

    _options: ClientOptions

    def _send(self, call: Attempts, *, stream: bool) -> httpx.Response: ...


class AsyncSender(Protocol):
    """What an asyncio handle needs of its client (``AsyncServiceClient``)."""

    _options: ClientOptions

    async def _send(self, call: Attempts, *, stream: bool) -> httpx.Response: ...


class _Answered(Exception):
    """An error answer of a request that is not to be retried on its own (a poll of the
    result route): the handle decides, with the job's status."""

    def __init__(self, error: ServingError) -> None:
        super().__init__(str(error))
        self.error = error


class JobRequest(Attempts):
    """One request of the job routes: ``method`` to the predict route's URL + ``path``, with
    ``body`` (a submission) or none, and the retries of any call (unsafe ones included).

    ``timeout``: seconds for each attempt (default: the client's); ``retry_for``: seconds of
    retries (default: the client's). ``answers``: whether an
    error answer is retried by its code; when False it is handed to the caller at once.
    ``poll``: a long-poll, whose ``retry_for`` starts at its first failure rather than when
    it was sent (a poll may wait a minute before its connection breaks).
    """

    def __init__(
        self,
        options: ClientOptions,
        request_id: str | None,
        *,
        method: str,
        path: str,
        body: Body | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        retry_for: float | None = None,
        accept: str = "application/json",
        answers: bool = True,
        poll: bool = False,
    ) -> None:
        options = replace(
            options,
            url=options.url + path,
            shown=options.shown + path,
            retry_unsafe=True,
            timeout=options.timeout if timeout is None else timeout,
            retry_for=options.retry_for if retry_for is None else retry_for,
        )
        super().__init__(options, request_id, body or Body(), streaming=False)
        self.method = method
        self.params = dict(params or {})
        self._has_body = body is not None
        if not self._has_body:
            self.headers.pop("content-type", None)
        self.headers["accept"] = accept
        self.headers.update(headers or {})
        self._answers = answers
        self._poll = poll
        self._failed = False

    def request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        self.attempts += 1
        timeout = self.options.timeout
        return http.build_request(
            self.method,
            self.options.url,
            headers=self.headers,
            params=self.params or None,
            timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
            **(self.body.request_args() if self._has_body else {}),
        )

    def after_transport_error(self, exc: httpx.TransportError) -> float:
        if self._poll and not self._failed:
            self._failed = True
            self.started = self._clock()  # retry_for from here
        return super().after_transport_error(exc)

    def after_answer(self, response: httpx.Response, body: bytes) -> float:
        if self._answers:
            return super().after_answer(response, body)
        rid = self.answered_id(response)
        raise _Answered(error_from_answer(response.status_code, body, response.headers, rid))


def _require_jobs(options: ClientOptions) -> None:
    service = options.service
    if service.spec.config.jobs is None:
        raise TypeError(
            f"{service.name} takes no jobs: turn them on with @gpu_service(..., jobs=True) "
            "and serve it again, or call client.predict(item)"
        )


def submission(
    options: ClientOptions,
    item: Any,
    *,
    idempotency_key: str | None,
    webhook: str | None,
    request_id: str | None,
) -> JobRequest:
    """The ``POST <route>/jobs`` of ``item``: the body ``predict`` would send, and an
    ``Idempotency-Key`` (a new one when none is given), so that a retry makes no second job."""
    _require_jobs(options)
    if idempotency_key is None:
        idempotency_key = os.urandom(16).hex()
    elif not idempotency_key_ok(idempotency_key):
        raise ValueError(
            f"submit(idempotency_key={idempotency_key!r}) is invalid: use 1 to 255 printable "
            "ASCII characters without spaces that name this job (e.g. an order id), or None "
            "for one made per submit call"
        )
    headers = {IDEMPOTENCY_HEADER: idempotency_key}
    if webhook is not None:
        if not (isinstance(webhook, str) and webhook.startswith(("https://", "http://"))):
            raise ValueError(
                f"submit(webhook={webhook!r}) is not an http(s) URL: pass the URL that is to "
                "receive the job's end, e.g. 'https://example.com/hooks/jobs'"
            )
        headers[WEBHOOK_HEADER] = webhook
    body = options.service.encode(item)
    return JobRequest(options, request_id, method="POST", path="/jobs", body=body, headers=headers)


def job_path(job_id: str) -> str:
    """The path of a job under the predict route."""
    return "/jobs/" + quote(job_id, safe="")


def _check_id(job_id: object) -> str:
    if not (isinstance(job_id, str) and job_id.strip()):
        raise ValueError(
            f"job({job_id!r}): pass the id of a submitted job, as job.id or JobStatus.id gives it"
        )
    return job_id


def read_status(response: httpx.Response, call: Attempts) -> JobStatus:
    """The ``JobStatus`` a job route answered."""
    try:
        return JobStatus.model_validate_json(response.content)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        name = call.options.service.name
        raise UpstreamError(
            f"the answer of {response.request.method} {call.options.shown} is not a job's "
            f"status ({where}: {first['msg']}); does the server run {name} with jobs on?",
            retry_after=None,
            request_id=call.answered_id(response),
        ) from exc


def _wait_param(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


class ResultWait:
    """The decisions of ``result(timeout)``: how long each poll asks the service to wait,
    how long to pause after a 202, and what an error answer of the result route means.

    ``timeout`` None waits for as long as the job runs. ``clock`` is monotonic.
    """

    def __init__(
        self,
        job_id: str,
        options: ClientOptions,
        timeout: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout is not None and not (
            isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout >= 0
        ):
            raise ValueError(
                f"result(timeout={timeout!r}) must be seconds >= 0, or None to wait until the "
                "job ends"
            )
        self.job_id = job_id
        self.options = options
        self.timeout = timeout
        self._clock = clock
        self.deadline = None if timeout is None else clock() + timeout
        jobs = options.service.spec.config.jobs
        self.longest = min(MAX_POLL, jobs.max_wait) if jobs is not None else MAX_POLL
        self.state: JobState | None = None
        self._backoff = FIRST_BACKOFF
        self._failing_since: float | None = None
        self._cut = False

    def left(self) -> float | None:
        return None if self.deadline is None else self.deadline - self._clock()

    def poll(self) -> JobRequest:
        """The next poll: ``GET .../result?wait=<min(time left, 60)>``."""
        left = self.left()
        wait = self.longest if left is None else max(0.0, min(left, self.longest))
        file = self.options.service.answers_file
        retry_for = None if left is None else max(0.0, min(left, self.options.retry_for))
        # a poll whose retries the timeout cuts short: its giving up is the timeout's
        self._cut = retry_for is not None and retry_for < self.options.retry_for
        return JobRequest(
            self.options,
            None,
            method="GET",
            path=job_path(self.job_id) + "/result",
            params={"wait": _wait_param(wait)},
            timeout=wait + POLL_MARGIN,
            retry_for=retry_for,
            accept="*/*" if file else "application/json",
            answers=False,
            poll=True,
        )

    def asked(self, call: JobRequest) -> float:
        return float(call.params["wait"])

    def pending(
        self, status: JobStatus, response: httpx.Response, asked: float, took: float
    ) -> float:
        """Seconds to pause after a 202 (the job still queued or running) that came after
        ``took`` seconds of a poll that asked for ``asked``; raises ``TimeoutError`` once the
        timeout is spent."""
        self.state = status.state
        self.answered()
        left = self.left()
        if left is not None and left <= 0:
            raise self.timed_out()
        if took >= asked / 2:
            return 0.0  # the service held the poll: ask again at once
        said = retry_after_seconds(response.headers.get("retry-after"))
        pause = EARLY_PAUSE if said is None else float(said)
        return pause if left is None else min(pause, left)

    def answered(self) -> None:
        """A poll got a 2xx: the next failure starts a new backoff."""
        self._backoff = FIRST_BACKOFF
        self._failing_since = None

    @staticmethod
    def worth_a_look(error: ServingError) -> bool:
        """Whether the result route's error answer may be a passing failure rather than the
        job's own (whose codes may be retryable: ``stalled``, ``predict_failed``): then the
        job's status decides."""
        return ERROR_CODES[error.code].retry is not Retry.NEVER

    def failed(self, error: ServingError, status: JobStatus) -> float:
        """Seconds to wait before polling again after ``error`` answered a poll while the
        job's status is ``status``; raises ``error`` when it is the job's own failure, or
        when ``retry_for`` seconds of failures (or the timeout) are spent. (A job canceled
        or expired meanwhile: the next poll answers its 409 or 410.)"""
        self.state = status.state
        if status.state is JobState.FAILED:
            raise error
        now = self._clock()
        if self._failing_since is None:
            self._failing_since = now
        wait = max(float(error.retry_after or 0), self._backoff)  # never a spin
        self._backoff = min(2 * self._backoff, MAX_BACKOFF)
        if self.deadline is not None and now + wait > self.deadline:
            raise self.timed_out() from error
        if now - self._failing_since + wait > self.options.retry_for:
            raise error
        return wait

    def broken(self, exc: httpx.TransportError) -> float:
        """Seconds to wait before polling again after a file answer's body broke off; the
        failures of every poll count together against ``retry_for`` and the timeout."""
        now = self._clock()
        if self._failing_since is None:
            self._failing_since = now
        wait = self._backoff
        self._backoff = min(2 * self._backoff, MAX_BACKOFF)
        if self.deadline is not None and now + wait > self.deadline:
            raise self.timed_out() from exc
        if now - self._failing_since + wait > self.options.retry_for:
            raise UpstreamError(
                f"the answer of job {self.job_id!r} kept breaking off while it was read "
                f"({type(exc).__name__}) for {self.options.retry_for:g} s (retry_for); "
                f"collect it later with client.job({self.job_id!r}).result()"
            ) from exc
        return wait

    def gave_up(self, error: ServingError) -> BaseException:
        """What ``result`` raises when a poll's own retries gave up with ``error``: the
        timeout's ``TimeoutError`` once it is spent, else ``error``."""
        left = self.left()
        return self.timed_out() if self._cut or (left is not None and left <= 0) else error

    def timed_out(self) -> TimeoutError:
        state = "" if self.state is None else f" (state: {self.state})"
        return TimeoutError(
            f"job {self.job_id!r} of {self.options.service.name} did not end within "
            f"result(timeout={self.timeout:g}){state}; it goes on: collect its answer later "
            f"with client.job({self.job_id!r}).result(), or stop it with "
            f"client.job({self.job_id!r}).cancel()"
        )


class _Handle:
    """What both handles share: the job's id, where it is, and its status last read."""

    _options: ClientOptions

    def __init__(self, options: ClientOptions, job_id: str, status: JobStatus | None) -> None:
        _require_jobs(options)
        self._options = options
        self.id = _check_id(job_id)
        self.last = status  # the status last read (None until one is)

    @property
    def url(self) -> str:
        """The job's status URL."""
        return self._options.shown + job_path(self.id)

    def _request(self, method: str, path: str = "") -> JobRequest:
        return JobRequest(self._options, None, method=method, path=job_path(self.id) + path)

    def _seen(self, response: httpx.Response, call: Attempts) -> JobStatus:
        self.last = read_status(response, call)
        return self.last

    def _value(self, response: httpx.Response, call: Attempts) -> Any:
        return self._options.service.decode(
            response.content, call.options.shown, call.answered_id(response)
        )

    def __repr__(self) -> str:
        state = "not read yet" if self.last is None else str(self.last.state)
        return f"<{type(self).__name__} {self.id} {state} {self.url}>"


class JobHandle(_Handle, Generic[ResponseT]):
    """A submitted job of a service: ``client.submit(item)`` makes one, ``client.job(id)``
    finds one again (in another process, after a restart). ``id``: the job's id; ``last``:
    the ``JobStatus`` last read. Nothing is sent until a method is called."""

    def __init__(self, client: Sender, job_id: str, status: JobStatus | None = None) -> None:
        super().__init__(client._options, job_id, status)
        self._client = client

    def status(self) -> JobStatus:
        """The job's status: its state, progress, error and times."""
        call = self._request("GET")
        return self._seen(self._client._send(call, stream=False), call)

    def cancel(self) -> JobStatus:
        """Cancel the job (a queued one never runs, a running one stops at its next
        ``progress`` report); a job that already ended is answered as it is."""
        call = self._request("POST", "/cancel")
        return self._seen(self._client._send(call, stream=False), call)

    def result(self, timeout: float | None = None) -> ResponseT:
        """The job's answer (the response model, or a ``File``), once it ends.

        Polls the result route, each poll waiting up to 60 s on the service. A failed job
        raises the kit's exception for its code (``PredictError``, ``InputError``, ...), a
        canceled one ``InputError`` with code ``job_canceled`` (409), one whose result is
        gone ``job_expired`` (410). Past ``timeout`` seconds (None: no limit) raises
        ``TimeoutError``; the job goes on, and ``client.job(id).result()`` collects it later.
        """
        waiting = ResultWait(self.id, self._options, timeout)
        file = self._options.service.answers_file
        while True:
            call = waiting.poll()
            started = time.monotonic()
            try:
                response = self._client._send(call, stream=file)
            except _Answered as answered:
                if not waiting.worth_a_look(answered.error):
                    raise answered.error from None
                time.sleep(waiting.failed(answered.error, self.status()))
                continue
            except ServingError as exc:  # the poll's retries gave up (no connection)
                raise waiting.gave_up(exc) from exc
            if response.status_code == 202:
                response.read()
                response.close()
                status = self._seen(response, call)
                asked = waiting.asked(call)
                time.sleep(waiting.pending(status, response, asked, time.monotonic() - started))
                continue
            if not file:
                return cast("ResponseT", self._value(response, call))
            try:
                return cast("ResponseT", read_file_answer(response))
            except httpx.TransportError as exc:
                time.sleep(waiting.broken(exc))
                continue


class AsyncJobHandle(_Handle, Generic[ResponseT]):
    """The ``asyncio`` twin of ``JobHandle``: ``await job.status()``, ``await job.result()``,
    ``await job.cancel()``."""

    def __init__(self, client: AsyncSender, job_id: str, status: JobStatus | None = None) -> None:
        super().__init__(client._options, job_id, status)
        self._client = client

    async def status(self) -> JobStatus:
        """``JobHandle.status``, awaited."""
        call = self._request("GET")
        return self._seen(await self._client._send(call, stream=False), call)

    async def cancel(self) -> JobStatus:
        """``JobHandle.cancel``, awaited."""
        call = self._request("POST", "/cancel")
        return self._seen(await self._client._send(call, stream=False), call)

    async def result(self, timeout: float | None = None) -> ResponseT:
        """``JobHandle.result``, awaited."""
        waiting = ResultWait(self.id, self._options, timeout)
        file = self._options.service.answers_file
        while True:
            call = waiting.poll()
            started = time.monotonic()
            try:
                response = await self._client._send(call, stream=file)
            except _Answered as answered:
                if not waiting.worth_a_look(answered.error):
                    raise answered.error from None
                await asyncio.sleep(waiting.failed(answered.error, await self.status()))
                continue
            except ServingError as exc:  # the poll's retries gave up (no connection)
                raise waiting.gave_up(exc) from exc
            if response.status_code == 202:
                await response.aread()
                await response.aclose()
                status = self._seen(response, call)
                asked = waiting.asked(call)
                took = time.monotonic() - started
                await asyncio.sleep(waiting.pending(status, response, asked, took))
                continue
            if not file:
                return cast("ResponseT", self._value(response, call))
            try:
                return cast("ResponseT", await aread_file_answer(response))
            except httpx.TransportError as exc:
                await asyncio.sleep(waiting.broken(exc))
                continue
