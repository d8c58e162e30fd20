"""``ModalBackend``: how Modal failures reach the client, what is (not) retried, cancellation.

The remote call object is a fake (``.remote.aio`` raising real ``modal.exception`` types); the
lookup without credentials runs against the real SDK.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import modal
import pytest
from fastapi.testclient import TestClient
from modal import exception as modal_errors
from pydantic import BaseModel

from modal_fastapi_kit import ModelServer, gpu_service
from modal_fastapi_kit._backends.modal import ModalBackend
from modal_fastapi_kit._core.spec import service_spec
from modal_fastapi_kit._core.state import LoadState
from modal_fastapi_kit._modal import credentials_configured
from modal_fastapi_kit.exceptions import QueueFullError


class NumIn(BaseModel):
    x: int


class NumOut(BaseModel):
    y: int


@gpu_service(name="remote-doubler", route="/double", gpu="A10", timeout=300, request_timeout=2)
class RemoteDoubler(ModelServer[NumIn, NumOut]):
    def predict(self, item: NumIn) -> NumOut:  # runs on Modal; never called by these tests
        raise AssertionError("the model must not run locally")


class FakeRemote:
    """Stands in for ``Cls()``: records payloads; ``behaviour`` answers or raises."""

    def __init__(self, behaviour: Any) -> None:
        self.behaviour = behaviour
        self.payloads: list[Any] = []
        self.cancelled = asyncio.Event()
        self.instances = 0

    def __call__(self) -> SimpleNamespace:
        self.instances += 1
        return SimpleNamespace(mfk_predict=SimpleNamespace(remote=SimpleNamespace(aio=self.call)))

    async def call(self, payload: Any) -> Any:
        self.payloads.append(payload)
        try:
            if isinstance(self.behaviour, BaseException):
                raise self.behaviour
            if callable(self.behaviour):
                return await self.behaviour(payload)
            return self.behaviour
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


def client_for(fake: FakeRemote) -> TestClient:
    return TestClient(RemoteDoubler.asgi_app(backend="modal", handle=fake))


def test_a_call_sends_a_plain_dict_and_validates_the_answer():
    fake = FakeRemote({"ok": {"y": 42}})
    with client_for(fake) as client:
        assert client.get("/readyz").status_code == 200
        response = client.post("/double", json={"x": 21})
    assert response.status_code == 200
    assert response.json() == {"y": 42}
    assert fake.payloads == [{"x": 21}]


def test_health_and_readiness_never_call_the_gpu_class():
    fake = FakeRemote({"ok": {"y": 0}})
    with client_for(fake) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
    assert fake.payloads == []


UNAVAILABLE = "the model service is unavailable; retry later"
UNREACHABLE = "the model service cannot be reached; retry shortly"
FAILED_TO_RUN = "the model service failed to run the request; retry shortly"
LATE = "the model did not answer in time"


@pytest.mark.parametrize(
    ("raised", "status", "retry_after", "answer", "logged"),
    [
        (modal_errors.AuthError("Token missing"), 503, "5", UNAVAILABLE, "modal token new"),
        (modal_errors.PermissionDeniedError("no"), 503, "5", UNAVAILABLE, "MODAL_TOKEN_ID"),
        (modal_errors.NotFoundError("App not found"), 503, "5", UNAVAILABLE, "mfk deploy"),
        (modal_errors.FunctionTimeoutError("timed out"), 504, None, LATE, "timeout=300s"),
        (modal_errors.OutputExpiredError("expired"), 504, None, LATE, "OutputExpiredError"),
        (modal_errors.ConnectionError("reset"), 503, "5", UNREACHABLE, "cannot reach Modal"),
        (modal_errors.ServiceError("unavailable"), 503, "5", UNREACHABLE, "cannot reach Modal"),
        (ConnectionRefusedError(111, "refused"), 503, "5", UNREACHABLE, "cannot reach Modal"),
        (modal_errors.InternalFailure("crashed"), 502, "5", FAILED_TO_RUN, "Modal failed to run"),
        (modal_errors.RemoteError("oom"), 502, "5", FAILED_TO_RUN, "Modal failed to run"),
        (modal_errors.ExecutionError("pickle"), 502, "5", FAILED_TO_RUN, "Modal failed to run"),
    ],
)
def test_modal_failures_answer_a_short_message_and_log_the_rest(
    raised, status, retry_after, answer, logged, caplog
):
    fake = FakeRemote(raised)
    with client_for(fake) as client:
        response = client.post("/double", json={"x": 1})
    assert response.status_code == status, response.json()
    assert response.headers.get("retry-after") == retry_after
    assert response.json()["detail"] == answer
    assert "RemoteDoubler" not in response.text and "remote-doubler" not in response.text
    rid = response.json()["request_id"]
    assert rid == response.headers["x-request-id"]
    assert any(rid in r.message and logged in r.message for r in caplog.records)
    if isinstance(raised, modal_errors.ConnectionError | ConnectionRefusedError):
        assert len(fake.payloads) > 1  # never reached Modal: sent again until the deadline
    else:
        assert len(fake.payloads) == 1  # may have run: never sent again


def test_a_request_modal_never_received_is_sent_again_within_the_deadline():
    failures = [modal_errors.ConnectionError("connect failed")] * 2

    async def flaky(payload: Any) -> Any:
        if failures:
            raise failures.pop()
        return {"ok": {"y": 2 * payload["x"]}}

    fake = FakeRemote(flaky)
    with client_for(fake) as client:
        response = client.post("/double", json={"x": 4})
    assert response.json() == {"y": 8}
    assert len(fake.payloads) == 3


def test_a_request_modal_may_have_run_is_never_sent_again():
    fake = FakeRemote(modal_errors.InternalFailure("the container died mid-input"))
    with client_for(fake) as client:
        assert client.post("/double", json={"x": 4}).status_code == 502
    assert len(fake.payloads) == 1


def test_max_queue_size_bounds_the_calls_in_flight():
    release = asyncio.Event()

    async def held(payload: Any) -> Any:
        await release.wait()
        return {"ok": {"y": 0}}

    async def scenario() -> None:
        backend = ModalBackend(service_spec(Bounded), handle=FakeRemote(held))
        await backend.start()
        deadline = asyncio.get_running_loop().time() + 5
        calls = [backend.submit(NumIn(x=i), deadline=deadline) for i in range(2)]
        with pytest.raises(QueueFullError, match="2 requests in flight"):
            backend.submit(NumIn(x=9), deadline=deadline)
        release.set()
        await asyncio.gather(*calls)
        backend.submit(NumIn(x=3), deadline=deadline)  # room again
        await backend.stop()

    asyncio.run(scenario())


@gpu_service(name="bounded", route="/double", max_queue_size=2)
class Bounded(ModelServer[NumIn, NumOut]):
    def predict(self, item: NumIn) -> NumOut:
        raise AssertionError("the model must not run locally")


GPU_FAILED = {
    "error": {
        "code": "predict_failed",
        "status": 500,
        "detail": "RemoteDoubler.predict raised ValueError: secret detail",
    }
}


@pytest.mark.parametrize("answer", [GPU_FAILED, KeyError("unexpected"), {"unexpected": 1}])
def test_remote_predict_failure_is_500_with_request_id_and_no_detail(answer, caplog):
    fake = FakeRemote(answer)
    with client_for(fake) as client:
        response = client.post("/double", json={"x": 1}, headers={"x-request-id": "req-7"})
    assert response.status_code == 500
    assert response.json() == {
        "detail": "predict failed; quote the request id when reporting it",
        "code": "predict_failed",
        "request_id": "req-7",
    }
    assert "req-7" in caplog.text  # the operator finds the cause in the log
    assert len(fake.payloads) == 1


@pytest.mark.parametrize(
    ("envelope", "status", "says"),
    [
        (
            {"code": "invalid_input", "status": 413, "detail": "x is too large"},
            413,
            "x is too large",
        ),
        ({"code": "invalid_input", "status": 200, "detail": "odd status"}, 422, "odd status"),
        ({"code": "stalled", "status": 503, "detail": "stuck for 130s"}, 503, "stuck"),
        ({"code": "no_such_code", "status": 418, "detail": "secret"}, 500, "predict failed"),
    ],
)
def test_errors_the_gpu_tier_answers_keep_their_status(envelope, status, says):
    fake = FakeRemote({"error": envelope})
    with client_for(fake) as client:
        response = client.post("/double", json={"x": 1})
    assert response.status_code == status
    assert says in response.json()["detail"]
    assert response.json()["code"] == (
        envelope["code"] if envelope["code"] != "no_such_code" else "predict_failed"
    )
    assert "secret" not in response.text


def test_a_call_past_the_deadline_is_504_and_is_cancelled():
    async def forever(payload: Any) -> Any:
        await asyncio.Event().wait()

    fake = FakeRemote(forever)
    with client_for(fake) as client:
        started = time.monotonic()
        response = client.post("/double", json={"x": 1})
        assert response.status_code == 504
        assert time.monotonic() - started < 10
        for _ in range(200):
            if fake.cancelled.is_set():
                break
            time.sleep(0.01)
    assert fake.cancelled.is_set()


def test_cancelling_the_future_withdraws_the_call_and_stop_drains_the_rest():
    async def scenario() -> None:
        release = asyncio.Event()

        async def held(payload: Any) -> Any:
            await release.wait()
            return {"ok": {"y": 2 * payload["x"]}}

        fake = FakeRemote(held)
        backend = ModalBackend(service_spec(RemoteDoubler), handle=fake)
        await backend.start()
        assert backend.state is LoadState.READY
        deadline = asyncio.get_running_loop().time() + 5
        withdrawn = backend.submit(NumIn(x=1), deadline=deadline)
        kept = backend.submit(NumIn(x=2), deadline=deadline)
        await asyncio.sleep(0.01)
        withdrawn.cancel()
        await asyncio.wait_for(fake.cancelled.wait(), 5)
        stopping = asyncio.create_task(backend.stop())
        await asyncio.sleep(0.01)
        assert not kept.done()  # stop waits for in-flight calls
        release.set()
        await asyncio.wait_for(stopping, 5)
        assert kept.result() == NumOut(y=4)
        assert backend.state is LoadState.STOPPED

    asyncio.run(scenario())


def test_lookup_by_name_retries_until_the_class_is_deployed(monkeypatch):
    attempts: list[tuple[str, str, str | None]] = []
    fake = FakeRemote({"ok": {"y": 1}})

    class Handle:
        def __init__(self) -> None:
            self.hydrate = SimpleNamespace(aio=self._hydrate)

        async def _hydrate(self) -> None:
            if len(attempts) < 2:
                raise modal_errors.NotFoundError("App 'remote-doubler' not found")

        def __call__(self) -> Any:
            return fake()

    def from_name(app_name: str, name: str, *, environment_name: str | None = None) -> Handle:
        attempts.append((app_name, name, environment_name))
        return Handle()

    monkeypatch.setattr(modal.Cls, "from_name", from_name)

    async def scenario() -> None:
        backend = ModalBackend(
            service_spec(RemoteDoubler), environment_name="prod", lookup_retry=0.01
        )
        await backend.start()
        await backend.wait_looked_up()
        assert backend.state is LoadState.FAILED
        assert "mfk deploy" in (backend.error or "")  # for the log and mfk, not for clients
        for _ in range(500):
            if backend.state is LoadState.READY:
                break
            await asyncio.sleep(0.01)
        assert backend.state is LoadState.READY
        assert backend.error is None
        await backend.stop()

    asyncio.run(scenario())
    assert attempts[0] == ("remote-doubler", "RemoteDoubler", "prod")
    assert len(attempts) == 2  # one failed lookup, then the one that found it
    assert fake.payloads == []  # resolving the class woke no GPU


def test_without_credentials_the_real_sdk_fails_at_once_and_the_log_says_why(caplog):
    if credentials_configured():
        pytest.skip("this machine has Modal credentials")
    started = time.monotonic()
    with TestClient(RemoteDoubler.asgi_app(backend="modal")) as client:
        for _ in range(500):
            ready = client.get("/readyz")
            if ready.json()["status"] == "failed":
                break
            time.sleep(0.01)
        assert ready.status_code == 503
        assert ready.json()["detail"] == "the server's log says why"
        assert client.get("/healthz").status_code == 200
        predict = client.post("/double", json={"x": 1})
        assert predict.status_code == 503
        assert predict.json()["detail"] == UNAVAILABLE
    assert time.monotonic() - started < 10  # AuthError comes at once, with no network
    assert "modal token new" in caplog.text


def test_backend_modal_is_known_to_create_backend():
    router = RemoteDoubler.router(backend="modal", app_name="other-app", class_name="Other")
    assert isinstance(router.backend, ModalBackend)
    assert router.backend.target == "class 'Other' of Modal app 'other-app'"
