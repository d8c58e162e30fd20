"""Jobs from the typed client: ``submit(item)`` -> a handle, ``job(id)``, and the handle's
``status()``, ``result(timeout)`` and ``cancel()``.

First the decisions over ``httpx.MockTransport`` (each answer made with the server's own
status document and error body), through the blocking and the asyncio client; then end to
end against a real server on 127.0.0.1 and its job routes."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from modal_fastapi_kit import File, ModelServer, gpu_service
from modal_fastapi_kit._http.errors import error_response
from modal_fastapi_kit._jobs.options import JobOptions
from modal_fastapi_kit._jobs.status import JobError, JobInfo, JobLinks, JobProgress
from modal_fastapi_kit.client import (
    AsyncJobHandle,
    AsyncServiceClient,
    JobHandle,
    JobState,
    JobStatus,
    ServiceClient,
)
from modal_fastapi_kit.exceptions import (
    ERROR_CODES,
    ErrorCode,
    InputError,
    ModelStalled,
    PredictError,
    QueueFullError,
    Unauthorized,
    UpstreamError,
    error_for,
)

from .._servers import BIN, ROOT, ThreadedServer, free_port, running, wait_ready
from .._toys import NumIn, NumOut

BASE = "http://svc.test"
JOBS = f"{BASE}/double/jobs"


@gpu_service(name="jobs-toy", route="/double", jobs=JobOptions(max_wait=5))
class Jobbed(ModelServer[NumIn, NumOut]):
    def predict(self, item: NumIn) -> NumOut:
        return NumOut(y=2 * item.x)


@gpu_service(name="no-jobs", route="/double")
class Plain(ModelServer[NumIn, NumOut]):
    def predict(self, item: NumIn) -> NumOut:
        return NumOut(y=2 * item.x)


class Caption(BaseModel):
    image: File
    caption: str


@gpu_service(name="file-jobs", route="/flip", jobs=True)
class Flip(ModelServer[Caption, File]):
    def predict(self, item: Caption) -> File:
        return File(item.image.read()[::-1], content_type="image/png", filename="flipped.png")


def status(job_id: str = "j-1", state: str = "queued", **fields: Any) -> dict[str, Any]:
    """A job's status document as the service answers it."""
    base = f"{JOBS}/{job_id}"
    info = JobInfo(id=job_id, state=JobState(state), created_at=1_700_000_000.0, **fields)
    links = JobLinks(status=base, result=f"{base}/result", cancel=f"{base}/cancel")
    return info.status(links).model_dump(mode="json")


def accepted(job_id: str = "j-1", state: str = "queued", **fields: Any) -> httpx.Response:
    return httpx.Response(
        202,
        json=status(job_id, state, **fields),
        headers={"retry-after": "0", "location": f"{JOBS}/{job_id}"},
    )


def kit_answer(code: ErrorCode, detail: str, status_code: int | None = None) -> httpx.Response:
    """What a service answers for an error with ``code``: the server's own error response."""
    info = ERROR_CODES[code]
    error = error_for(code, detail, status_code=status_code or info.status or 422, retry_after=0)
    answer = error_response(error, "rid-server")
    headers = {k: v for k, v in answer.headers.items() if k != "content-length"}
    return httpx.Response(answer.status_code, content=bytes(answer.body), headers=headers)


class Routes:
    """A MockTransport handler: answers per ``(method, path)`` from a list (its last answer
    repeats); an answer may be an exception to raise. Records every request."""

    def __init__(self, answers: dict[tuple[str, str], list[Any]]) -> None:
        self.answers = answers
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        queue = self.answers.get((request.method, path_of(request)))
        if not queue:
            return httpx.Response(404, json={"detail": "no route", "code": "not_found"})
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def seen(self) -> list[str]:
        return [f"{r.method} {path_of(r)}" for r in self.requests]


def path_of(request: httpx.Request) -> str:
    """The path as sent, still percent-encoded."""
    return request.url.raw_path.decode().partition("?")[0]


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def use(
    kind: str,
    routes: Routes,
    work: Callable[[Any], Any],
    cls: type[Any] = Jobbed,
    **options: Any,
) -> Any:
    """``work(client)`` with the blocking or the asyncio client of ``cls`` over ``routes``
    (for the asyncio one, ``work`` returns what is awaited)."""
    transport = httpx.MockTransport(routes)
    if kind == "sync":
        http = httpx.Client(transport=transport, base_url=BASE)
        with http, ServiceClient(cls, http_client=http, **options) as client:
            return work(client)

    async def run() -> Any:
        async with (
            httpx.AsyncClient(transport=transport, base_url=BASE) as http,
            AsyncServiceClient(cls, http_client=http, **options) as client,
        ):
            return await work(client)

    return asyncio.run(run())


def submit_and(kind: str, then: str, *args: Any, **submit: Any) -> Callable[[Any], Any]:
    """A ``work`` function: submit ``NumIn(x=2)``, then call the handle's ``then(*args)``
    (``""``: return the handle)."""
    if kind == "sync":

        def work(client: Any) -> Any:
            job = client.submit(NumIn(x=2), **submit)
            return job if not then else getattr(job, then)(*args)

        return work

    async def awork(client: Any) -> Any:
        job = await client.submit(NumIn(x=2), **submit)
        return job if not then else await getattr(job, then)(*args)

    return awork


def on_job(kind: str, then: str, *args: Any, job_id: str = "j-1") -> Callable[[Any], Any]:
    """A ``work`` function: ``client.job(job_id).then(*args)``."""
    if kind == "sync":
        return lambda client: getattr(client.job(job_id), then)(*args)

    async def awork(client: Any) -> Any:
        return await getattr(client.job(job_id), then)(*args)

    return awork


# --- submit ---


def test_submit_posts_the_predict_body_with_a_fresh_idempotency_key(kind):
    routes = Routes({("POST", "/double/jobs"): [accepted("j-7")]})
    job = use(kind, routes, submit_and(kind, ""), api_key="k" * 32)
    assert isinstance(job, JobHandle if kind == "sync" else AsyncJobHandle)
    assert job.id == "j-7" and job.last is not None and job.last.state is JobState.QUEUED
    assert job.url == f"{JOBS}/j-7"
    assert repr(job) == f"<{type(job).__name__} j-7 queued {JOBS}/j-7>"
    (post,) = routes.requests
    assert (post.method, str(post.url), post.content) == ("POST", JOBS, b'{"x":2}')
    assert post.headers["content-type"] == "application/json"
    assert post.headers["accept"] == "application/json"
    assert post.headers["authorization"] == "Bearer " + "k" * 32
    assert re.fullmatch(r"[0-9a-f]{32}", post.headers["idempotency-key"])
    assert "webhook-url" not in post.headers
    again = Routes({("POST", "/double/jobs"): [accepted("j-8")]})
    use(kind, again, submit_and(kind, ""))
    assert again.requests[0].headers["idempotency-key"] != post.headers["idempotency-key"]


def test_submit_sends_the_key_the_webhook_and_the_request_id_given(kind):
    routes = Routes({("POST", "/double/jobs"): [accepted()]})
    work = submit_and(
        kind,
        "",
        idempotency_key="order-42",
        webhook="https://example.com/hooks/jobs",
        request_id="sub-1",
    )
    use(kind, routes, work)
    headers = routes.requests[0].headers
    assert headers["idempotency-key"] == "order-42"
    assert headers["webhook-url"] == "https://example.com/hooks/jobs"
    assert headers["x-request-id"] == "sub-1"


@pytest.mark.parametrize(
    "failure",
    [
        lambda: kit_answer(ErrorCode.PREDICT_FAILED, "the store broke"),
        lambda: kit_answer(ErrorCode.UPSTREAM_FAILED, "the backend broke"),
        lambda: httpx.ReadError("connection reset after sending"),
        lambda: kit_answer(ErrorCode.TOO_MANY_JOBS, "1000 jobs are queued"),
    ],
    ids=["500", "502", "broken", "too-many"],
)
def test_a_submission_is_retried_with_the_same_key_even_after_what_may_have_run(kind, failure):
    routes = Routes({("POST", "/double/jobs"): [failure(), accepted("j-2")]})
    job = use(kind, routes, submit_and(kind, ""), retry_for=5)  # retry_unsafe left False
    assert job.id == "j-2"
    first, second = routes.requests
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
    assert first.headers["x-request-id"] == second.headers["x-request-id"]
    assert first.content == second.content == b'{"x":2}'


def test_a_key_reused_with_another_body_is_not_retried(kind):
    reused = kit_answer(ErrorCode.IDEMPOTENCY_KEY_REUSED, "the key was sent with another body")
    routes = Routes({("POST", "/double/jobs"): [reused, accepted()]})
    with pytest.raises(InputError) as refused:
        use(kind, routes, submit_and(kind, "", idempotency_key="order-1"), retry_for=5)
    assert (refused.value.status_code, refused.value.code) == (422, "idempotency_key_reused")
    assert refused.value.request_id == "rid-server" and len(routes.requests) == 1


def test_too_many_jobs_past_retry_for_raises_queue_full(kind):
    routes = Routes({("POST", "/double/jobs"): [kit_answer(ErrorCode.TOO_MANY_JOBS, "full")]})
    with pytest.raises(QueueFullError) as full:
        use(kind, routes, submit_and(kind, ""), retry_for=0)
    assert (full.value.status_code, full.value.code) == (503, "too_many_jobs")


def test_a_file_item_is_submitted_as_multipart(kind):
    routes = Routes({("POST", "/flip/jobs"): [accepted()]})
    item = Caption(image=File(b"\x89PNG...", content_type="image/png"), caption="cat")
    if kind == "sync":
        use(kind, routes, lambda c: c.submit(item), cls=Flip)
    else:

        async def work(client: Any) -> Any:
            return await client.submit(item)

        use(kind, routes, work, cls=Flip)
    post = routes.requests[0]
    assert post.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert b'name="caption"' in post.content and b"\x89PNG..." in post.content


def test_what_is_not_a_job_status_says_so(kind):
    routes = Routes({("POST", "/double/jobs"): [httpx.Response(202, json={"y": 4})]})
    with pytest.raises(UpstreamError) as odd:
        use(kind, routes, submit_and(kind, ""))
    assert odd.value.detail.startswith(f"the answer of POST {JOBS} is not a job's status (id:")
    assert odd.value.detail.endswith("does the server run Jobbed with jobs on?")


def test_a_service_without_jobs_refuses_before_sending(kind):
    routes = Routes({})
    with pytest.raises(TypeError, match=r"Plain takes no jobs: turn them on with @gpu_service"):
        use(kind, routes, submit_and(kind, ""), cls=Plain)
    with (
        ServiceClient(Plain, BASE) as client,
        pytest.raises(TypeError, match="Plain takes no jobs"),
    ):
        client.job("j-1")
    assert routes.requests == []


def test_bad_arguments_are_refused_before_sending():
    with ServiceClient(Jobbed, "http://127.0.0.1:9") as client:
        for key in ["", "two words", "é", "k" * 256]:
            with pytest.raises(ValueError, match=r"idempotency_key=.*\) is invalid: use 1 to"):
                client.submit(NumIn(x=1), idempotency_key=key)
        with pytest.raises(ValueError, match=r"webhook='ftp://x'\) is not an http\(s\) URL"):
            client.submit(NumIn(x=1), webhook="ftp://x")
        with pytest.raises(ValueError, match=r"job\(''\): pass the id of a submitted job"):
            client.job("")
        with pytest.raises(ValueError, match=r"result\(timeout=-1\) must be seconds >= 0"):
            client.job("j").result(timeout=-1)
        with pytest.raises(InputError, match="the item is not a valid NumIn"):
            client.submit({"x": "many"})


# --- status, cancel, job(id) ---


def test_job_by_id_sends_nothing_until_used_and_quotes_the_id(kind):
    progress = {"progress": JobProgress(fraction=0.5, message="half")}
    running = httpx.Response(200, json=status("a/b c", "running", **progress))
    routes = Routes({("GET", "/double/jobs/a%2Fb%20c"): [running]})
    read = use(kind, routes, on_job(kind, "status", job_id="a/b c"))
    assert isinstance(read, JobStatus)
    assert (read.id, read.state, read.progress) == ("a/b c", JobState.RUNNING, progress["progress"])
    assert routes.seen() == ["GET /double/jobs/a%2Fb%20c"]
    assert "content-type" not in routes.requests[0].headers


def test_cancel_posts_to_the_cancel_route_and_answers_the_status(kind):
    canceled = httpx.Response(200, json=status("j-1", "canceled"))
    routes = Routes({("POST", "/double/jobs/j-1/cancel"): [canceled]})
    read = use(kind, routes, on_job(kind, "cancel"))
    assert read.state is JobState.CANCELED and read.done
    assert routes.requests[0].content == b""


def test_status_is_retried_on_unsafe_errors_and_raises_a_missing_job(kind):
    flaky = kit_answer(ErrorCode.PREDICT_FAILED, "oops")
    routes = Routes({("GET", "/double/jobs/j-1"): [flaky, httpx.Response(200, json=status())]})
    assert use(kind, routes, on_job(kind, "status"), retry_for=5).state is JobState.QUEUED
    assert len(routes.requests) == 2
    missing = Routes({("GET", "/double/jobs/j-1"): [kit_answer(ErrorCode.JOB_NOT_FOUND, "no job")]})
    with pytest.raises(InputError) as gone:
        use(kind, missing, on_job(kind, "status"), retry_for=5)
    assert (gone.value.status_code, gone.value.code) == (404, "job_not_found")
    assert len(missing.requests) == 1


# --- result ---


def test_result_polls_until_the_answer(kind):
    result = "/double/jobs/j-1/result"
    routes = Routes(
        {
            ("POST", "/double/jobs"): [accepted()],
            ("GET", result): [
                accepted(state="queued"),
                accepted(state="running", progress=JobProgress(fraction=0.3)),
                httpx.Response(200, json={"y": 4}),
            ],
        }
    )
    assert use(kind, routes, submit_and(kind, "result")) == NumOut(y=4)
    assert routes.seen() == ["POST /double/jobs"] + [f"GET {result}"] * 3
    polls = routes.requests[1:]
    assert [p.url.params["wait"] for p in polls] == ["5"] * 3  # the service's max_wait
    assert all(p.headers["accept"] == "application/json" for p in polls)


def test_a_poll_asks_for_no_more_than_the_time_left(kind):
    routes = Routes({("GET", "/double/jobs/j-1/result"): [httpx.Response(200, json={"y": 8})]})
    assert use(kind, routes, on_job(kind, "result", 2.5)) == NumOut(y=8)
    assert 2.0 < float(routes.requests[0].url.params["wait"]) <= 2.5


def test_result_past_its_timeout_raises_timeout_error_saying_how_to_resume(kind):
    routes = Routes({("GET", "/double/jobs/j-1/result"): [accepted(state="running")]})
    with pytest.raises(TimeoutError) as late:
        use(kind, routes, on_job(kind, "result", 0))
    assert str(late.value) == (
        "job 'j-1' of Jobbed did not end within result(timeout=0) (state: running); it goes "
        "on: collect its answer later with client.job('j-1').result(), or stop it with "
        "client.job('j-1').cancel()"
    )
    assert len(routes.requests) == 1 and routes.requests[0].url.params["wait"] == "0"


def test_a_service_that_answers_at_once_is_polled_after_its_retry_after(kind):
    quick = httpx.Response(202, json=status(state="running"), headers={"retry-after": "1"})
    routes = Routes({("GET", "/double/jobs/j-1/result"): [quick]})
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        use(kind, routes, on_job(kind, "result", 2.2))
    assert time.monotonic() - started >= 2.0
    assert 2 <= len(routes.requests) <= 4  # about one poll a second, not a busy loop


@pytest.mark.parametrize(
    ("code", "raised"),
    [
        (ErrorCode.PREDICT_FAILED, PredictError),
        (ErrorCode.STALLED, ModelStalled),
    ],
)
def test_a_failed_job_raises_its_error_once_its_status_says_failed(kind, code, raised):
    said = ERROR_CODES[code].status or 500
    error = JobError(detail="predict failed; quote the request id", code=code, status=said)
    failed = httpx.Response(200, json=status(state="failed", error=error))
    routes = Routes(
        {
            ("GET", "/double/jobs/j-1/result"): [kit_answer(code, "the model raised")],
            ("GET", "/double/jobs/j-1"): [failed],
        }
    )
    with pytest.raises(raised) as caught:
        use(kind, routes, on_job(kind, "result"), retry_for=30)
    assert caught.value.code == code and caught.value.detail == "the model raised"
    assert caught.value.request_id == "rid-server"
    assert routes.seen() == ["GET /double/jobs/j-1/result", "GET /double/jobs/j-1"]


def test_a_passing_error_of_the_result_route_is_polled_again(kind):
    routes = Routes(
        {
            ("GET", "/double/jobs/j-1/result"): [
                kit_answer(ErrorCode.PREDICT_FAILED, "the store hiccuped"),
                httpx.Response(200, json={"y": 12}),
            ],
            ("GET", "/double/jobs/j-1"): [httpx.Response(200, json=status(state="running"))],
        }
    )
    assert use(kind, routes, on_job(kind, "result"), retry_for=30) == NumOut(y=12)
    assert routes.seen() == [
        "GET /double/jobs/j-1/result",
        "GET /double/jobs/j-1",
        "GET /double/jobs/j-1/result",
    ]


def test_a_passing_error_that_lasts_past_retry_for_is_raised(kind):
    routes = Routes(
        {
            ("GET", "/double/jobs/j-1/result"): [kit_answer(ErrorCode.UPSTREAM_FAILED, "down")],
            ("GET", "/double/jobs/j-1"): [httpx.Response(200, json=status(state="running"))],
        }
    )
    with pytest.raises(UpstreamError, match="down"):
        use(kind, routes, on_job(kind, "result"), retry_for=0.5)


def test_a_succeeded_job_whose_result_route_keeps_failing_ends_after_retry_for(kind):
    routes = Routes(
        {
            ("GET", "/double/jobs/j-1/result"): [kit_answer(ErrorCode.PREDICT_FAILED, "lost")],
            ("GET", "/double/jobs/j-1"): [httpx.Response(200, json=status(state="succeeded"))],
        }
    )
    started = time.monotonic()
    with pytest.raises(PredictError, match="lost"):
        use(kind, routes, on_job(kind, "result"), retry_for=0.5)
    assert time.monotonic() - started < 5
    assert 4 <= len(routes.requests) <= 12  # a few polls with a backoff between, not a spin


class Slowly:
    """Answers a poll after ``delay`` seconds: first by breaking the connection, then 200."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.polls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.polls += 1
        time.sleep(self.delay)
        if self.polls == 1:
            raise httpx.ReadError("the connection broke while the poll waited")
        return httpx.Response(200, json={"y": 10})


def test_a_long_poll_that_breaks_late_is_retried_from_its_failure(kind):
    slowly = Slowly(delay=0.6)
    transport = httpx.MockTransport(slowly)

    # retry_for=0.3 is spent before the poll breaks: it counts from the failure
    if kind == "sync":
        http = httpx.Client(transport=transport, base_url=BASE)
        with http, ServiceClient(Jobbed, http_client=http, retry_for=0.3) as client:
            assert client.job("j-1").result() == NumOut(y=10)
    else:

        async def run() -> Any:
            async with (
                httpx.AsyncClient(transport=transport, base_url=BASE) as http,
                AsyncServiceClient(Jobbed, http_client=http, retry_for=0.3) as client,
            ):
                return await client.job("j-1").result()

        assert asyncio.run(run()) == NumOut(y=10)
    assert slowly.polls == 2


@pytest.mark.parametrize(
    ("code", "status_code"),
    [
        (ErrorCode.JOB_CANCELED, 409),
        (ErrorCode.JOB_EXPIRED, 410),
        (ErrorCode.JOB_NOT_FOUND, 404),
        (ErrorCode.INVALID_INPUT, 422),  # a job the model refused: its own 4xx
    ],
)
def test_a_canceled_expired_missing_or_refused_job_raises_at_once(kind, code, status_code):
    answer = kit_answer(code, f"the job is {code}")
    routes = Routes({("GET", "/double/jobs/j-1/result"): [answer]})
    with pytest.raises(InputError) as caught:
        use(kind, routes, on_job(kind, "result"), retry_for=30)
    assert (caught.value.code, caught.value.status_code) == (code, status_code)
    assert caught.value.detail == f"the job is {code}"
    assert len(routes.requests) == 1


def test_a_file_service_s_result_is_a_file(kind):
    png = b"\x89PNG" + bytes(range(200))
    answer = httpx.Response(
        200,
        content=png,
        headers={"content-type": "image/png", "content-disposition": 'inline; filename="f.png"'},
    )
    routes = Routes({("GET", "/flip/jobs/j-1/result"): [accepted(state="running"), answer]})
    got = use(kind, routes, on_job(kind, "result"), cls=Flip)
    assert isinstance(got, File)
    assert (got.read(), got.content_type, got.filename) == (png, "image/png", "f.png")
    assert all(r.headers["accept"] == "*/*" for r in routes.requests)


def test_a_poll_that_breaks_is_made_again(kind):
    routes = Routes(
        {
            ("GET", "/double/jobs/j-1/result"): [
                httpx.ReadError("reset"),
                httpx.Response(200, json={"y": 2}),
            ]
        }
    )
    assert use(kind, routes, on_job(kind, "result")) == NumOut(y=2)
    assert len(routes.requests) == 2


def test_a_file_result_that_keeps_breaking_off_ends_within_the_timeout(kind):
    from .test_client_files import Broken

    broken = [httpx.Response(200, stream=Broken()) for _ in range(100)]  # each read once
    routes = Routes({("GET", "/flip/jobs/j-1/result"): broken})
    began = time.monotonic()
    with pytest.raises(TimeoutError, match="did not end within result"):
        use(kind, routes, on_job(kind, "result", 1.0), cls=Flip, retry_for=30)
    assert time.monotonic() - began < 5  # not retry_for, and never for ever
    assert 2 <= len(routes.requests) < 20  # with a backoff between the polls


def test_polls_that_cannot_connect_end_with_the_timeout_not_retry_for(kind):
    routes = Routes({("GET", "/double/jobs/j-1/result"): [httpx.ConnectError("refused")]})
    began = time.monotonic()
    with pytest.raises(TimeoutError, match="did not end within result"):
        use(kind, routes, on_job(kind, "result", 0.5), retry_for=30)
    assert time.monotonic() - began < 5


# --- end to end: a real server and its job routes ---

GATE_SECONDS = 30


class Slow:
    """A jobs service whose predict reports progress and waits on ``gate``."""

    def __init__(self, store: Path) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        gate, started = self.gate, self.started

        @gpu_service(name="slow-jobs", route="/double", jobs=JobOptions(store=str(store)))
        class SlowJobs(ModelServer[NumIn, NumOut]):
            def predict(self, item: NumIn) -> NumOut:
                if item.x < 0:
                    raise ValueError("negative input")
                self.progress(0.25, "started")
                started.set()
                for _ in range(GATE_SECONDS * 20):
                    if gate.wait(0.05):
                        break
                    self.progress(0.5, "waiting")  # raises JobCanceled once canceled
                self.progress(1.0, "done")
                return NumOut(y=2 * item.x)

        self.cls = SlowJobs


@pytest.fixture
def slow(tmp_path: Path) -> Iterator[tuple[Slow, str]]:
    service = Slow(tmp_path / "jobs.sqlite3")
    with ThreadedServer(service.cls.asgi_app()) as server:
        wait_ready(server.url, timeout=30)
        try:
            yield service, server.url
        finally:
            service.gate.set()


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_e2e_submit_status_and_result(slow):
    service, url = slow
    with service.cls.client(url) as client:
        job = client.submit(NumIn(x=21), idempotency_key="e2e-1")
        assert job.last is not None and job.last.state in (JobState.QUEUED, JobState.RUNNING)
        assert service.started.wait(20)
        running = job.status()
        assert running.state is JobState.RUNNING and running.progress is not None
        assert running.links.result == f"{url}/double/jobs/{job.id}/result"
        with pytest.raises(TimeoutError, match=rf"client.job\('{job.id}'\).result\(\)"):
            job.result(timeout=0.5)
        service.gate.set()
        assert client.job(job.id).result(timeout=20) == NumOut(y=42)
        assert job.status().state is JobState.SUCCEEDED
        again = client.submit(NumIn(x=21), idempotency_key="e2e-1")  # the same job
        assert again.id == job.id


@pytest.mark.e2e
@pytest.mark.timeout(60)
async def test_e2e_async_cancel_and_failure(slow):
    service, url = slow
    async with service.cls.async_client(url) as client:
        job = await client.submit(NumIn(x=1))
        assert await asyncio.to_thread(service.started.wait, 20)
        canceled = await job.cancel()
        assert canceled.state is JobState.CANCELED
        with pytest.raises(InputError) as caught:
            await job.result(timeout=20)
        assert (caught.value.status_code, caught.value.code) == (409, "job_canceled")
        service.gate.set()
        bad = await client.submit(NumIn(x=-1))
        with pytest.raises(PredictError) as failed:
            await bad.result(timeout=20)
        assert (failed.value.status_code, failed.value.code) == (500, "predict_failed")
        assert (await bad.status()).state is JobState.FAILED
        with pytest.raises(InputError) as missing:
            await client.job("no-such-job").status()
        assert (missing.value.status_code, missing.value.code) == (404, "job_not_found")


KEY_A = "job-key-a-0123456789abcdef0123"
KEY_B = "job-key-b-0123456789abcdef0123"


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_e2e_a_job_is_seen_only_with_the_key_that_submitted_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MFK_API_KEYS", f"{KEY_A},{KEY_B}")
    store = str(tmp_path / "keyed.sqlite3")

    @gpu_service(name="keyed-jobs", route="/double", auth="api-key", jobs=JobOptions(store=store))
    class KeyedJobs(ModelServer[NumIn, NumOut]):
        def predict(self, item: NumIn) -> NumOut:
            return NumOut(y=2 * item.x)

    with ThreadedServer(KeyedJobs.asgi_app()) as server:
        wait_ready(server.url, timeout=30)
        with KeyedJobs.client(server.url, api_key=KEY_A) as mine:
            job = mine.submit(NumIn(x=5))
            assert job.result(timeout=20) == NumOut(y=10)
        with KeyedJobs.client(server.url, api_key=KEY_B) as theirs:
            for read in (theirs.job(job.id).status, theirs.job(job.id).result):
                with pytest.raises(InputError) as hidden:
                    read()
                assert (hidden.value.status_code, hidden.value.code) == (404, "job_not_found")
        with KeyedJobs.client(server.url) as anonymous, pytest.raises(Unauthorized):
            anonymous.submit(NumIn(x=1))


# --- docs/testing.md: "Jobs from the client", against `mfk serve examples/corpus.py` ---

DOC = (ROOT / "docs" / "testing.md").read_text()
SECTION = DOC.partition("## Jobs from the client")[2]


def test_the_section_has_the_one_snippet_this_runs():
    blocks = re.findall(r"```(\w+)\n(.*?)```", SECTION, flags=re.S)
    assert [lang for lang, _ in blocks] == ["python"]
    assert "mfk serve examples/corpus.py --port 8002" in SECTION


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_the_jobs_snippet_against_mfk_serve(capsys, tmp_path):
    (code,) = re.findall(r"```python\n(.*?)```", SECTION, flags=re.S)
    port = free_port()
    env = {"MFK_JOBS_DB": str(tmp_path / "jobs.sqlite3")}
    args = ["serve", "examples/corpus.py", "--port", str(port)]
    with running([str(BIN / "mfk"), *args], env=env):
        wait_ready(f"http://127.0.0.1:{port}", timeout=180)
        exec(compile(code.replace("8002", str(port)), "testing.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] in ("queued", "running"), lines
    assert lines[1:] == ["(2, 384)", "succeeded"]
