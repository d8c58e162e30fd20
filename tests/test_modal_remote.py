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

from modal_fastapi_kit import LoadState, ModelServer, gpu_service
from modal_fastapi_kit._backends.modal import ModalBackend
from modal_fastapi_kit._core.spec import service_spec
from modal_fastapi_kit._modal import credentials_configured


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


@pytest.mark.parametrize(
    ("raised", "status", "retry_after", "says"),
    [
        (modal_errors.AuthError("Token missing"), 503, "5", "modal token new"),
        (modal_errors.PermissionDeniedError("no"), 503, "5", "MODAL_TOKEN_ID"),
        (modal_errors.NotFoundError("App not found"), 503, "5", "mfk deploy"),
        (modal_errors.FunctionTimeoutError("timed out"), 504, None, "timeout=300s"),
        (modal_errors.OutputExpiredError("expired"), 504, None, "Modal timed out"),
        (modal_errors.ConnectionError("reset"), 503, "5", "cannot reach Modal"),
        (modal_errors.ServiceError("unavailable"), 503, "5", "cannot reach Modal"),
        (ConnectionRefusedError(111, "refused"), 503, "5", "cannot reach Modal"),
        (modal_errors.InternalFailure("container crashed"), 502, "5", "Modal failed to run"),
        (modal_errors.RemoteError("oom"), 502, "5", "Modal failed to run"),
        (modal_errors.ExecutionError("cannot deserialize"), 502, "5", "Modal failed to run"),
    ],
)
def test_modal_failures_map_to_clear_http_answers(raised, status, retry_after, says):
    fake = FakeRemote(raised)
    with client_for(fake) as client:
        response = client.post("/double", json={"x": 1})
    assert response.status_code == status, response.json()
    assert response.headers.get("retry-after") == retry_after
    assert says in response.json()["detail"]
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert len(fake.payloads) == 1  # nothing is retried by the backend


GPU_FAILED = {
    "error": {
        "type": "PredictError",
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
        "request_id": "req-7",
    }
    assert "req-7" in caplog.text  # the operator finds the cause in the log
    assert len(fake.payloads) == 1


@pytest.mark.parametrize(
    ("envelope", "status", "says"),
    [
        ({"type": "InputError", "status": 413, "detail": "x is too large"}, 413, "x is too large"),
        ({"type": "InputError", "status": 200, "detail": "odd status"}, 422, "odd status"),
        ({"type": "ModelStalled", "status": 503, "detail": "stuck for 130s"}, 503, "stuck"),
        ({"type": "NoSuchError", "status": 418, "detail": "secret"}, 500, "predict failed"),
    ],
)
def test_errors_the_gpu_tier_answers_keep_their_status(envelope, status, says):
    fake = FakeRemote({"error": envelope})
    with client_for(fake) as client:
        response = client.post("/double", json={"x": 1})
    assert response.status_code == status
    assert says in response.json()["detail"]
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
        assert "mfk deploy" in (backend.error or "")
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


def test_without_credentials_the_real_sdk_fails_at_once_and_readyz_says_why():
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
        assert "modal token new" in ready.json()["detail"]
        assert client.get("/healthz").status_code == 200
        predict = client.post("/double", json={"x": 1})
        assert predict.status_code == 503
        assert "unavailable" in predict.json()["detail"]
    assert time.monotonic() - started < 10  # AuthError comes at once, with no network


def test_backend_modal_is_known_to_create_backend():
    router = RemoteDoubler.router(backend="modal", app_name="other-app", class_name="Other")
    assert isinstance(router.backend, ModalBackend)
    assert router.backend.target == "class 'Other' of Modal app 'other-app'"
