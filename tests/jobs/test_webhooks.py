"""Webhooks: the secrets and their headers, the URL checks, the event, and real deliveries to
receivers on 127.0.0.1 (signed calls verified there, retries, refusals, timeouts); then the
receiver's side, ``modal_fastapi_kit.webhooks.verify_webhook``, and its documented example."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

import modal_fastapi_kit.webhooks as public
from modal_fastapi_kit._jobs.options import MAX_WEBHOOK_DELAY, JobOptions
from modal_fastapi_kit._jobs.status import JobError, JobLinks, JobState, JobStatus, WebhookStatus
from modal_fastapi_kit._jobs.webhooks import (
    MAX_WEBHOOK_URL,
    WebhookSigner,
    check_webhook_address,
    check_webhook_url,
    deliver,
    retry_delay,
    send_once,
    webhook_event,
)
from modal_fastapi_kit.exceptions import ConfigError, ErrorCode, InputError
from modal_fastapi_kit.webhooks import WebhookEvent, WebhookVerificationError, verify_webhook

from .._servers import ThreadedServer, certificate, free_port


def new_secret(size: int = 32) -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(size)).decode()


OLD, NEW, OTHER = new_secret(24), new_secret(), new_secret()
NOW = datetime.now(timezone.utc)


def job(state: JobState = JobState.SUCCEEDED, job_id: str = "job-1") -> JobStatus:
    base = f"https://api.example/embed/jobs/{job_id}"
    return JobStatus(
        id=job_id,
        state=state,
        created_at=NOW - timedelta(seconds=30),
        started_at=NOW - timedelta(seconds=20),
        finished_at=None if not state.done else NOW,
        error=JobError(detail="boom", code=ErrorCode.PREDICT_FAILED, status=500)
        if state is JobState.FAILED
        else None,
        links=JobLinks(status=base, result=f"{base}/result", cancel=f"{base}/cancel"),
    )


# -- the secrets and their headers ------------------------------------------------------------


def test_the_environment_gives_a_signer_or_none() -> None:
    options = JobOptions()
    assert WebhookSigner.from_environment(options, {}) is None
    assert WebhookSigner.from_environment(options, {"MFK_WEBHOOK_SECRET": " , "}) is None
    one = WebhookSigner.from_environment(options, {"MFK_WEBHOOK_SECRET": NEW})
    two = WebhookSigner.from_environment(options, {"MFK_WEBHOOK_SECRET": f" {OLD} ,{NEW},"})
    assert one is not None and two is not None
    assert (one.count, two.count) == (1, 2)
    assert repr(two) == "WebhookSigner(<2 secrets>)"
    assert NEW not in repr(two) and NEW[6:] not in repr(two)
    renamed = JobOptions(webhook_secret_env="HOOK_KEYS")
    assert WebhookSigner.from_environment(renamed, {"MFK_WEBHOOK_SECRET": NEW}) is None
    assert WebhookSigner.from_environment(renamed, {"HOOK_KEYS": NEW}) is not None


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("s3cr3t-value-" * 4, "(the 2nd of 2): it does not start with 'whsec_'"),
        ("whsec_not*base64*at*all", "(the 2nd of 2): what follows 'whsec_' is not base64"),
        ("whsec_" + base64.b64encode(b"s3cr3t-short").decode(), "stands for 12 bytes, under 24"),
    ],
)
def test_a_malformed_secret_names_the_variable_and_the_fix_not_the_value(
    value: str, said: str
) -> None:
    options = JobOptions(webhook_secret_env="HOOK_KEYS")
    with pytest.raises(ConfigError) as caught:
        WebhookSigner.from_environment(options, {"HOOK_KEYS": f"{NEW},{value}"})
    message = str(caught.value)
    assert message.startswith("$HOOK_KEYS holds a malformed webhook secret")
    assert said in message
    assert "secrets.token_bytes(32)" in message  # how to make one
    for shown in (value, value.removeprefix("whsec_"), "s3cr3t", NEW, NEW[6:]):
        assert shown not in message


def test_the_headers_are_standard_webhooks_signed_by_every_secret() -> None:
    signer = WebhookSigner([OLD, NEW])
    when = datetime(2030, 1, 2, 3, 4, 5, 900_000, tzinfo=timezone.utc)
    headers = signer.headers("job-1.succeeded", b'{"a": 1}', when)
    assert headers["webhook-id"] == "job-1.succeeded"
    assert headers["webhook-timestamp"] == str(int(when.timestamp()))
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"].startswith("modal-fastapi-kit")
    signatures = headers["webhook-signature"].split(" ")
    expected = [
        standardwebhooks.Webhook(s).sign("job-1.succeeded", when, b'{"a": 1}') for s in (OLD, NEW)
    ]
    assert signatures == expected
    assert all(s.startswith("v1,") for s in signatures)
    # a naive timestamp is UTC
    naive = signer.headers("m", b"", when.replace(tzinfo=None))
    assert naive["webhook-timestamp"] == headers["webhook-timestamp"]
    with pytest.raises(
        ConfigError, match=r"a list of one or more whsec_\.\.\. secrets, not a str$"
    ):
        WebhookSigner(NEW)
    with pytest.raises(ConfigError, match=r"a list of one or more whsec_\.\.\. secrets, not none$"):
        WebhookSigner([])


# -- the URL ------------------------------------------------------------------------------------

REFUSED_URLS = [
    ("http://hooks.example/in", False, "it is plain http; give an https URL"),
    ("https://alice:hunter2@hooks.example/in", False, "a user name or password"),
    ("https:///in", False, "it has no host"),
    ("ftp://hooks.example/in", False, "its scheme is 'ftp'; give an https URL"),
    ("hooks.example/in", False, "it is not an absolute URL"),
    ("https://hooks.example/" + "a" * MAX_WEBHOOK_URL, False, "characters long, over 2048"),
    ("https://hooks.example:0/in", False, "the port 0 is outside 1-65535"),
    ("https://hooks.example:99999/in", False, "the port 99999 is outside 1-65535"),
    ("https://hooks example/in", False, "its host is not a host name"),
    ("https://hooks.example/\x00", False, "it is not a valid URL"),
    ("https://10.1.2.3/in", False, "10.1.2.3 is a private address"),
    ("https://127.0.0.1:8443/in", False, "127.0.0.1 is a loopback address"),
    ("https://[::1]/in", False, "::1 is a loopback address"),
    ("https://api.localhost/in", False, "api.localhost is a loopback address"),
    ("http://169.254.169.254/latest", True, "169.254.169.254 is the cloud metadata address"),
    ("mailto:ops@hooks.example", True, "its scheme is 'mailto'"),
]


@pytest.mark.parametrize(("url", "allow_private", "said"), REFUSED_URLS)
def test_a_refused_webhook_url_is_a_422_that_says_why_without_secrets(
    url: str, allow_private: bool, said: str
) -> None:
    with pytest.raises(InputError) as caught:
        check_webhook_url(url + "?token=s3cret", allow_private=allow_private)
    error = caught.value
    assert (error.status_code, error.code) == (422, ErrorCode.WEBHOOK_REFUSED)
    assert error.detail.startswith("the webhook URL ")
    assert said in error.detail
    for secret in ("hunter2", "alice", "s3cret", "token"):
        assert secret not in error.detail


def test_an_empty_webhook_url_is_refused() -> None:
    for url in ("", "  "):
        with pytest.raises(InputError, match="it is empty") as caught:
            check_webhook_url(url, allow_private=True)
        assert caught.value.code == ErrorCode.WEBHOOK_REFUSED


@pytest.mark.parametrize(
    ("url", "allow_private"),
    [
        ("https://hooks.example/in?token=abc", False),
        ("https://hooks.example:8443/in", False),
        ("https://8.8.8.8/in", False),
        ("https://bücher.example/in", False),
        ("http://hooks.example/in", True),
        ("http://127.0.0.1:8000/in", True),
        ("https://" + "a" * (MAX_WEBHOOK_URL - 8), False),
    ],
)
def test_an_accepted_webhook_url_is_returned_as_given(url: str, allow_private: bool) -> None:
    assert check_webhook_url(url, allow_private=allow_private) == url


@dataclass
class FakeDNS:
    """Answers from a table, counting the questions; a name not in it does not resolve."""

    table: dict[str, list[str]]
    asked: list[tuple[str, int]] = field(default_factory=list)

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.asked.append((host, port))
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.table[host]


async def test_the_address_check_resolves_the_name_and_refuses_non_public_answers() -> None:
    dns = FakeDNS(
        {
            "hooks.example": ["93.184.215.14"],
            "mixed.example": ["93.184.215.14", "10.0.0.9"],
            "inside.example": ["10.0.0.9"],
            "meta.example": ["169.254.169.254"],
        }
    )
    await check_webhook_address("https://hooks.example/in", allow_private=False, resolver=dns)
    assert dns.asked == [("hooks.example", 443)]
    cases = {
        "https://mixed.example/in": "mixed.example resolves to a private address",
        "https://inside.example:8443/in": "inside.example resolves to a private address",
        "https://nowhere.example/in": "nowhere.example does not resolve; check the host name",
    }
    for url, said in cases.items():
        with pytest.raises(InputError) as caught:
            await check_webhook_address(url, allow_private=False, resolver=dns)
        assert caught.value.code == ErrorCode.WEBHOOK_REFUSED
        assert said in caught.value.detail
        assert "10.0.0.9" not in caught.value.detail
    await check_webhook_address("http://inside.example/in", allow_private=True, resolver=dns)
    with pytest.raises(InputError, match="the cloud metadata address"):
        await check_webhook_address("http://meta.example/", allow_private=True, resolver=dns)


# -- the event ----------------------------------------------------------------------------------


@pytest.mark.parametrize("state", [JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED])
def test_the_event_of_a_job_that_ended(state: JobState) -> None:
    status = job(state)
    msg_id, body = webhook_event(status)
    assert msg_id == f"job-1.{state}"
    document = json.loads(body)
    assert set(document) == {"type", "timestamp", "data"}
    assert document["type"] == f"job.{state}"
    assert document["timestamp"].endswith("Z")  # ISO 8601, UTC
    assert document["data"] == json.loads(status.model_dump_json())
    event = WebhookEvent.model_validate_json(body)
    assert (event.timestamp, event.data) == (NOW, status)
    assert webhook_event(status) == (msg_id, body)  # the same on every attempt


@pytest.mark.parametrize("state", [JobState.QUEUED, JobState.RUNNING, JobState.EXPIRED])
def test_a_job_that_did_not_just_end_has_no_event(state: JobState) -> None:
    with pytest.raises(ValueError, match=f"job job-1 is {state}"):
        webhook_event(job(state))


def test_the_delay_doubles_from_the_backoff_up_to_an_hour() -> None:
    assert [retry_delay(n, 5.0) for n in (1, 2, 3, 4)] == [5.0, 10.0, 20.0, 40.0]
    assert retry_delay(11, 5.0) == MAX_WEBHOOK_DELAY
    assert retry_delay(10_000, 0.001) == MAX_WEBHOOK_DELAY
    with pytest.raises(ValueError, match="attempts_made=0"):
        retry_delay(0, 5.0)


# -- real deliveries to a receiver on 127.0.0.1 -----------------------------------------------


@dataclass
class Call:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A webhook receiver that records every call and answers as its path says."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.secrets: list[str] = []  # what /verify knows
        self.stop = threading.Event()
        self.app = Starlette(
            routes=[
                Route("/verify", self.verify, methods=["POST"]),
                Route("/answer/{codes}", self.answer, methods=["POST"]),
                Route("/slow-once", self.slow_once, methods=["POST"]),
            ]
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    async def _record(self, request: Request) -> Call:
        call = Call(request.url.path, dict(request.headers), await request.body())
        self.calls.append(call)
        return call

    def seen(self, path: str) -> list[Call]:
        return [call for call in self.calls if call.path == path]

    async def verify(self, request: Request) -> Response:
        """Verified as a receiver does with standardwebhooks alone."""
        call = await self._record(request)
        for secret in self.secrets:
            with contextlib.suppress(standardwebhooks.WebhookVerificationError):
                standardwebhooks.Webhook(secret).verify(call.body, call.headers)
                return Response(status_code=204)
        return PlainTextResponse("bad signature", status_code=400)

    async def answer(self, request: Request) -> Response:
        """The n-th call to /answer/500,500,200 answers the n-th status (the last, after)."""
        call = await self._record(request)
        codes = [int(code) for code in request.path_params["codes"].split(",")]
        code = codes[min(len(self.seen(call.path)) - 1, len(codes) - 1)]
        headers = {"location": "/verify"} if 300 <= code < 400 else None
        return Response(b"x" * 100_000, status_code=code, headers=headers)

    async def slow_once(self, request: Request) -> Response:
        call = await self._record(request)
        if len(self.seen(call.path)) == 1:
            for _ in range(200):  # at most 10 s; the teardown ends it at once
                if self.stop.is_set():
                    break
                await asyncio.sleep(0.05)
        return Response(status_code=204)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Receiver, int]]:
    receiver = Receiver()
    with ThreadedServer(receiver) as server:
        try:
            yield receiver, server.port
        finally:
            receiver.stop.set()


@pytest.fixture
def receiver(served: tuple[Receiver, int]) -> Receiver:
    served[0].calls.clear()
    served[0].secrets = []
    return served[0]


@pytest.fixture
def base(served: tuple[Receiver, int]) -> str:
    """The receiver under a name that only the injected resolver knows (``DNS``)."""
    return f"http://hooks.test:{served[1]}"


DNS = FakeDNS({"hooks.test": ["127.0.0.1"], "down.test": ["127.0.0.1"]})
OPTIONS = JobOptions(allow_private_webhooks=True, webhook_attempts=3, webhook_backoff=0.005)


class Sleeps:
    """``deliver``'s sleep: records each delay, then sleeps it (a few ms)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(seconds)


@dataclass
class Delivery:
    final: WebhookStatus
    seen: list[WebhookStatus]
    delays: list[float]


async def delivered_to(
    url: str,
    *,
    signer: WebhookSigner | None = None,
    options: JobOptions = OPTIONS,
    status: JobStatus | None = None,
    timeout: float = 10.0,
) -> Delivery:
    seen: list[WebhookStatus] = []
    sleeps = Sleeps()

    async def on_attempt(now: WebhookStatus) -> None:
        seen.append(now)

    msg_id, body = webhook_event(status or job())
    final = await deliver(
        url,
        msg_id,
        body,
        signer or WebhookSigner([NEW]),
        options,
        on_attempt=on_attempt,
        resolver=DNS,
        sleep=sleeps,
        timeout=timeout,
    )
    return Delivery(final, seen, sleeps.delays)


@pytest.mark.e2e
async def test_a_signed_call_verifies_at_the_receiver_and_parses(
    receiver: Receiver, base: str
) -> None:
    receiver.secrets = [NEW]
    status = job(JobState.FAILED)
    done = await delivered_to(f"{base}/verify", status=status)
    assert done.final == WebhookStatus(
        url=f"{base}/verify", state="delivered", attempts=1, last_status=204
    )
    assert done.seen == [done.final] and done.delays == []
    [call] = receiver.calls
    assert call.headers["host"] == base.removeprefix("http://")  # the name, not the address
    assert call.headers["webhook-id"] == "job-1.failed"
    assert call.headers["content-type"] == "application/json"
    event = verify_webhook(call.body, call.headers, NEW)
    assert event.type == "job.failed"
    assert event.data == status
    assert event.data.error is not None and event.data.error.code == ErrorCode.PREDICT_FAILED


@pytest.mark.e2e
async def test_while_rotating_a_receiver_knowing_either_secret_verifies(
    receiver: Receiver, base: str
) -> None:
    rotating = WebhookSigner([OLD, NEW])
    for known in ([OLD], [NEW]):
        receiver.secrets = known
        done = await delivered_to(f"{base}/verify", signer=rotating)
        assert (done.final.state, done.final.last_status) == ("delivered", 204)
    receiver.secrets = [OTHER]  # a receiver that knows neither refuses it: a 400, not retried
    done = await delivered_to(f"{base}/verify", signer=rotating)
    assert done.final.model_dump(exclude={"url"}) == {
        "state": "failed",
        "attempts": 1,
        "last_status": 400,
        "last_error": "it answered 400 Bad Request",
    }
    assert len(receiver.calls) == 3
    for call in receiver.calls:
        assert len(call.headers["webhook-signature"].split(" ")) == 2
        verify_webhook(call.body, call.headers, [OLD])
        verify_webhook(call.body, call.headers, f"{NEW}")
        with pytest.raises(WebhookVerificationError, match="No matching signature"):
            verify_webhook(call.body, call.headers, OTHER)


@pytest.mark.e2e
async def test_two_500s_then_a_200_is_delivered_on_the_third_attempt_as_the_same_message(
    receiver: Receiver, base: str
) -> None:
    url = f"{base}/answer/500,500,200"
    done = await delivered_to(url)
    assert [(s.state, s.attempts, s.last_status, s.last_error) for s in done.seen] == [
        ("pending", 1, 500, "it answered 500 Internal Server Error"),
        ("pending", 2, 500, "it answered 500 Internal Server Error"),
        ("delivered", 3, 200, None),
    ]
    assert done.final == done.seen[-1]
    assert done.delays == [0.005, 0.01]
    calls = receiver.seen("/answer/500,500,200")
    assert len(calls) == 3
    assert {call.headers["webhook-id"] for call in calls} == {"job-1.succeeded"}
    assert len({call.body for call in calls}) == 1
    for call in calls:  # each attempt is signed on its own, and verifies
        verify_webhook(call.body, call.headers, NEW)


@pytest.mark.e2e
async def test_a_429_is_retried_and_a_404_or_a_redirect_is_not(
    receiver: Receiver, base: str
) -> None:
    done = await delivered_to(f"{base}/answer/429,204")
    assert [(s.state, s.last_status) for s in done.seen] == [("pending", 429), ("delivered", 204)]
    assert done.seen[0].last_error == "it answered 429 Too Many Requests"
    done = await delivered_to(f"{base}/answer/429")
    assert (done.final.state, done.final.attempts, done.final.last_status) == ("failed", 3, 429)
    done = await delivered_to(f"{base}/answer/404,204")
    assert done.final.model_dump(exclude={"url"}) == {
        "state": "failed",
        "attempts": 1,
        "last_status": 404,
        "last_error": "it answered 404 Not Found",
    }
    assert done.delays == []
    done = await delivered_to(f"{base}/answer/307")
    assert (done.final.state, done.final.attempts, done.final.last_status) == ("failed", 1, 307)
    assert done.final.last_error == "it answered 307 Temporary Redirect; redirects are not followed"
    assert receiver.seen("/verify") == []  # the Location was not followed
    assert len(receiver.seen("/answer/404,204")) == len(receiver.seen("/answer/307")) == 1


@pytest.mark.e2e
async def test_a_receiver_that_is_down_is_retried_then_failed_saying_so() -> None:
    port = free_port()  # nothing listens there
    done = await delivered_to(f"http://down.test:{port}/in")
    assert [s.state for s in done.seen] == ["pending", "pending", "failed"]
    assert done.final.model_dump(exclude={"url"}) == {
        "state": "failed",
        "attempts": 3,
        "last_status": None,
        "last_error": f"could not connect to down.test on port {port}",
    }
    assert "127.0.0.1" not in str(done.final.last_error)
    assert done.delays == [0.005, 0.01]


@pytest.mark.e2e
async def test_a_receiver_slower_than_the_timeout_counts_as_a_failed_attempt(
    receiver: Receiver, base: str
) -> None:
    done = await delivered_to(f"{base}/slow-once", timeout=0.3)
    assert [(s.state, s.attempts, s.last_status, s.last_error) for s in done.seen] == [
        ("pending", 1, None, "no answer within 0.3 s"),
        ("delivered", 2, 204, None),
    ]
    assert len(receiver.seen("/slow-once")) == 2


@pytest.mark.e2e
async def test_an_unknown_name_is_retried_and_a_refused_one_is_not() -> None:
    done = await delivered_to("http://nowhere.test/in")
    assert (done.final.state, done.final.attempts) == ("failed", 3)
    assert done.final.last_error == "nowhere.test does not resolve"
    options = JobOptions(webhook_attempts=3, webhook_backoff=0.005)  # private refused
    done = await delivered_to("https://hooks.test/in", options=options)
    assert done.final.model_dump(exclude={"url"}) == {
        "state": "failed",
        "attempts": 1,
        "last_status": None,
        "last_error": "refused: hooks.test resolves to a loopback address",
    }


class Listener:
    """A TCP port on 127.0.0.1 that counts the connections made to it, and closes each."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.settimeout(0.05)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self.done.is_set():
            try:
                connection, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            connection.close()

    def __enter__(self) -> Listener:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(5)
        self.sock.close()


@pytest.mark.e2e
async def test_send_once_never_connects_to_a_refused_address() -> None:
    signer = WebhookSigner([NEW])
    msg_id, body = webhook_event(job())
    with Listener() as listener:
        dns = FakeDNS({"inside.test": ["127.0.0.1"], "mixed.test": ["8.8.8.8", "127.0.0.1"]})
        refused = {
            f"https://127.0.0.1:{listener.port}/in": "127.0.0.1 is a loopback address",
            f"https://inside.test:{listener.port}/in": (
                "refused: inside.test resolves to a loopback address"
            ),
            f"https://mixed.test:{listener.port}/in": (
                "refused: mixed.test resolves to a loopback address"
            ),
            f"http://127.0.0.1:{listener.port}/in": "it is plain http",
        }
        for url, said in refused.items():
            attempt = await send_once(
                url, msg_id, body, signer, allow_private=False, resolver=dns, timeout=5
            )
            assert (attempt.delivered, attempt.retry, attempt.status) == (False, False, None)
            assert attempt.error is not None and said in attempt.error
        assert dns.asked == [("inside.test", listener.port), ("mixed.test", listener.port)]
        assert listener.accepted == 0
        # the same name, allowed: it connects (the listener hangs up, so it is not delivered)
        attempt = await send_once(
            f"http://inside.test:{listener.port}/in",
            msg_id,
            body,
            signer,
            allow_private=True,
            resolver=dns,
            timeout=5,
        )
        assert (attempt.delivered, attempt.retry) == (False, True)
        assert listener.accepted == 1  # it accepted before it hung up


@pytest.mark.e2e
async def test_the_metadata_address_is_refused_even_with_private_webhooks_allowed() -> None:
    dns = FakeDNS({"meta.test": ["169.254.169.254"]})
    msg_id, body = webhook_event(job())
    attempt = await send_once(
        "http://meta.test/latest",
        msg_id,
        body,
        WebhookSigner([NEW]),
        allow_private=True,
        resolver=dns,
    )
    assert attempt == type(attempt)(
        delivered=False,
        retry=False,
        status=None,
        error="refused: meta.test resolves to the cloud metadata address",
    )


# -- TLS: a checked address, with the name kept for SNI and the certificate -----------------


@contextlib.contextmanager
def serving_tls(app: Any, cert: Path, key: Path) -> Iterator[int]:
    with ThreadedServer(app, certfile=str(cert), keyfile=str(key)) as server:
        yield server.port


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_https_checks_the_certificate_against_the_name_not_the_address(
    tmp_path: Path,
) -> None:
    import ssl

    cert, key = certificate(tmp_path, "hooks.test")
    other, _ = certificate(tmp_path, "other.test")
    receiver = Receiver()
    receiver.secrets = [NEW]
    dns = FakeDNS({"hooks.test": ["127.0.0.1"], "alias.test": ["127.0.0.1"]})
    msg_id, body = webhook_event(job())
    signer = WebhookSigner([NEW])
    with serving_tls(receiver, cert, key) as port:
        trusting = ssl.create_default_context(cafile=str(cert))
        attempt = await send_once(
            f"https://hooks.test:{port}/verify",
            msg_id,
            body,
            signer,
            allow_private=True,
            resolver=dns,
            tls=trusting,
        )
        assert (attempt.delivered, attempt.status) == (True, 204)
        assert receiver.calls[0].headers["host"] == f"hooks.test:{port}"
        # the same address under another name: the certificate is not for it
        attempt = await send_once(
            f"https://alias.test:{port}/verify",
            msg_id,
            body,
            signer,
            allow_private=True,
            resolver=dns,
            tls=trusting,
        )
        assert (attempt.delivered, attempt.retry) == (False, True)
        assert attempt.error is not None
        assert attempt.error.startswith("the TLS handshake with alias.test failed")
        # a certificate from an authority the sender does not trust
        attempt = await send_once(
            f"https://hooks.test:{port}/verify",
            msg_id,
            body,
            signer,
            allow_private=True,
            resolver=dns,
            tls=ssl.create_default_context(cafile=str(other)),
        )
        assert attempt.error is not None and "TLS handshake" in attempt.error
    assert len(receiver.calls) == 1


# -- the receiver's side ----------------------------------------------------------------------


def signed(
    body: bytes, secret: str = NEW, *, at: datetime | None = None, msg_id: str = "job-1.succeeded"
) -> dict[str, str]:
    return WebhookSigner([secret]).headers(msg_id, body, at)


def test_verify_webhook_parses_a_signed_event_with_any_of_its_secrets() -> None:
    _, body = webhook_event(job())
    headers = {name.upper(): value for name, value in signed(body).items()}  # any case
    for secret in (NEW, [NEW], [OTHER, NEW], f"{OTHER}, {NEW}", (NEW[6:],)):
        event = verify_webhook(body, headers, secret)
        assert (event.type, event.data.id) == ("job.succeeded", "job-1")
    assert verify_webhook(body.decode(), headers, NEW).data == job()  # a str body too


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ("tampered", "No matching signature found"),
        ("old", "Message timestamp too old"),
        ("future", "Message timestamp too new"),
        ("wrong secret", "No matching signature found"),
        ("no signature", "Missing required headers"),
        ("another id", "No matching signature found"),
    ],
)
def test_verify_webhook_refuses_what_the_secret_did_not_sign_now(change: str, said: str) -> None:
    _, body = webhook_event(job())
    now = datetime.now(timezone.utc)
    headers = signed(body)
    if change == "tampered":
        body = body.replace(b'"job-1"', b'"job-2"')
    elif change == "old":
        headers = signed(body, at=now - timedelta(minutes=6))
    elif change == "future":
        headers = signed(body, at=now + timedelta(minutes=6))
    elif change == "wrong secret":
        headers = signed(body, OTHER)
    elif change == "no signature":
        del headers["webhook-signature"]
    elif change == "another id":
        headers["webhook-id"] = "job-2.succeeded"
    with pytest.raises(WebhookVerificationError, match=said):
        verify_webhook(body, headers, [OLD, NEW])


@pytest.mark.parametrize(
    ("document", "said"),
    [
        ({"type": "job.started"}, "type: "),
        ("not json", "the body is not a job event"),
        ("state mismatch", "does not match data.state"),
    ],
)
def test_a_signed_body_that_is_not_a_job_event_is_refused(document: Any, said: str) -> None:
    _, real = webhook_event(job())
    parsed = json.loads(real)
    if document == "not json":
        body = b"hello"
    elif document == "state mismatch":
        body = json.dumps({**parsed, "type": "job.failed"}).encode()
    else:
        body = json.dumps({**parsed, **document}).encode()
    with pytest.raises(WebhookVerificationError, match="the body is not a job event") as caught:
        verify_webhook(body, signed(body), NEW)
    assert said in str(caught.value)


def test_a_secret_that_is_not_one_is_the_caller_s_mistake() -> None:
    _, body = webhook_event(job())
    for secret in ("", [], " , ", "whsec_***", ["whsec_"]):
        with pytest.raises(ValueError) as caught:
            verify_webhook(body, signed(body), secret)
        assert "***" not in str(caught.value)
    with pytest.raises(TypeError, match="secret 1 is a bytes"):
        verify_webhook(body, signed(body), [NEW.encode()])  # type: ignore[list-item]


def test_the_receiver_module_imports_neither_the_server_fastapi_nor_httpx() -> None:
    script = "import sys, modal_fastapi_kit.webhooks\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(out.stdout.split())
    assert "standardwebhooks" in loaded and "modal_fastapi_kit.webhooks" in loaded
    heavy = {"fastapi", "starlette", "httpx", "modal", "uvicorn", "prometheus_client"}
    assert not {m for m in loaded if m.split(".")[0] in heavy}
    assert not {
        m for m in loaded if m.startswith(("modal_fastapi_kit._http", "modal_fastapi_kit._server"))
    }


def docstring_receiver() -> str:
    """The receiver in ``modal_fastapi_kit.webhooks``'s docstring: its indented block."""
    doc = public.__doc__ or ""
    start = doc.index("A receiver, in a FastAPI app:")
    block = doc[start:].split("\n\n", 1)[1]
    lines: list[str] = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines))


@pytest.mark.e2e
async def test_the_documented_receiver_takes_a_delivery_and_refuses_a_forgery(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code = docstring_receiver()
    assert "verify_webhook(" in code and "@app.post" in code
    printed: list[tuple[object, ...]] = []
    namespace: dict[str, Any] = {"print": lambda *args: printed.append(args)}
    exec(compile(code, "modal_fastapi_kit/webhooks.py (docstring)", "exec"), namespace)
    monkeypatch.setenv("MFK_WEBHOOK_SECRET", f"{OLD},{NEW}")
    with ThreadedServer(namespace["app"]) as server:
        url = f"http://hooks.test:{server.port}/hooks/jobs"
        done = await delivered_to(url, signer=WebhookSigner([NEW]))
        assert (done.final.state, done.final.last_status) == ("delivered", 204)
        done = await delivered_to(url, signer=WebhookSigner([OTHER]))
        assert (done.final.state, done.final.last_status) == ("failed", 400)
    assert printed == [("job.succeeded", "job-1", job().links.result)]
