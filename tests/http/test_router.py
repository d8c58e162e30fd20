"""The router's routes and status codes, through FastAPI's TestClient."""

from __future__ import annotations

import gc
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from modal_fastapi_kit import ModelServer, gpu_service

from .._toys import NumIn, NumOut, Probe, doubler, sleeper, slow_loader


def wait_ready(client: TestClient, path: str = "/readyz") -> None:
    for _ in range(400):
        if client.get(path).status_code == 200:
            return
        time.sleep(0.025)
    raise AssertionError(f"{path} never became ready")


@pytest.fixture
def probe() -> Probe:
    return Probe()


def test_predict_answers_the_response_model_with_a_request_id(probe):
    with TestClient(doubler(probe, max_batch_size=4).asgi_app()) as client:
        wait_ready(client)
        response = client.post("/double", json={"x": 21})
        assert response.status_code == 200
        assert response.json() == {"y": 42}
        assert len(response.headers["x-request-id"]) == 32
        echoed = client.post("/double", json={"x": 1}, headers={"x-request-id": "abc-123"})
        assert echoed.headers["x-request-id"] == "abc-123"
        unsafe = client.post("/double", json={"x": 1}, headers={"x-request-id": "a b\tc"})
        assert unsafe.headers["x-request-id"] != "a b\tc"


def test_healthz_and_readyz(probe):
    release = threading.Event()
    with TestClient(slow_loader(release).asgi_app()) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        loading = client.get("/readyz")
        assert loading.status_code == 503
        assert loading.json()["status"] == "loading"
        assert loading.headers["retry-after"]
        early = client.post("/double", json={"x": 2})
        assert early.status_code == 503
        assert early.headers["retry-after"] == "5"
        assert "still loading" in early.json()["detail"]
        release.set()
        wait_ready(client)
        assert client.post("/double", json={"x": 2}).json() == {"y": 4}
        assert client.get("/healthz").status_code == 200


def test_readyz_follows_health():
    healthy = threading.Event()
    healthy.set()

    @gpu_service(name="flaky", route="/double")
    class Flaky(ModelServer[NumIn, NumOut]):
        def predict(self, item: NumIn) -> NumOut:
            return NumOut(y=item.x)

        def health(self) -> bool:
            return healthy.is_set()

    with TestClient(Flaky.asgi_app()) as client:
        wait_ready(client)
        healthy.clear()
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["status"] == "unhealthy"
        healthy.set()
        assert client.get("/readyz").status_code == 200


def test_a_failed_load_fails_liveness_and_says_why_only_in_the_log(caplog):
    @gpu_service(name="broken", route="/double")
    class Broken(ModelServer[NumIn, NumOut]):
        def load(self) -> None:
            raise FileNotFoundError("/srv/secret/path/weights.safetensors")

        def predict(self, item: NumIn) -> NumOut:
            return NumOut(y=item.x)

    with TestClient(Broken.asgi_app()) as client:
        for _ in range(200):
            ready = client.get("/readyz")
            if ready.json()["status"] == "failed":
                break
            time.sleep(0.01)
        assert ready.status_code == 503
        assert ready.json()["detail"] == "the model failed to load; the server's log says why"
        alive = client.get("/healthz")
        assert alive.status_code == 503  # nothing changes by waiting: restart the process
        assert alive.json()["status"] == "failed"
        predict = client.post("/double", json={"x": 1})
        assert predict.status_code == 503
        assert "retry-after" not in predict.headers
        assert predict.json()["detail"] == "the model failed to load; the server's log says why"
        assert "/srv/secret" not in ready.text + alive.text + predict.text
    assert "FileNotFoundError: /srv/secret/path/weights.safetensors" in caplog.text


def test_load_retries_load_again_with_backoff_and_liveness_holds_meanwhile(monkeypatch):
    from modal_fastapi_kit._backends import local

    monkeypatch.setattr(local, "LOAD_RETRY_DELAY", 0.2)
    attempts: list[float] = []

    @gpu_service(name="flaky-load", route="/double", load_retries=2)
    class FlakyLoad(ModelServer[NumIn, NumOut]):
        def load(self) -> None:
            attempts.append(time.monotonic())
            if len(attempts) < 3:
                raise ConnectionError("the weights store is not up yet")

        def predict(self, item: NumIn) -> NumOut:
            return NumOut(y=item.x)

    with TestClient(FlakyLoad.asgi_app()) as client:
        statuses = set()
        for _ in range(300):
            statuses.add(
                (client.get("/readyz").json()["status"], client.get("/healthz").status_code)
            )
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.01)
        assert client.post("/double", json={"x": 3}).json() == {"y": 3}
    assert len(attempts) == 3
    assert attempts[2] - attempts[1] >= 2 * (attempts[1] - attempts[0]) * 0.8  # backoff doubles
    assert ("failed", 503) not in statuses and ("loading", 200) in statuses


def test_validation_error_is_422(probe):
    with TestClient(doubler(probe).asgi_app()) as client:
        wait_ready(client)
        response = client.post("/double", json={"x": "not a number"})
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "x"]
        assert (
            client.post(
                "/double", content=b"{", headers={"content-type": "application/json"}
            ).status_code
            == 422
        )
        assert probe.batches == []


def test_body_over_the_limit_is_413(probe):
    with TestClient(doubler(probe, max_body_bytes=64).asgi_app()) as client:
        wait_ready(client)
        assert client.post("/double", json={"x": 1}).status_code == 200
        big = b'{"x": 1, "pad": "' + b"a" * 100 + b'"}'
        response = client.post("/double", content=big, headers={"content-type": "application/json"})
        assert response.status_code == 413
        assert response.json()["detail"] == "the request body is over the limit of 64 bytes"
        assert response.json()["request_id"] == response.headers["x-request-id"]

        def chunks():
            yield big[:40]
            yield big[40:]

        streamed = client.post(
            "/double", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413
        assert streamed.headers["content-type"] == "application/json"
        assert probe.batches == [[1]]


def test_predict_error_is_500_with_request_id_and_no_traceback(probe):
    with TestClient(doubler(probe).asgi_app(), raise_server_exceptions=False) as client:
        wait_ready(client)
        response = client.post("/double", json={"x": -1}, headers={"x-request-id": "req-7"})
        assert response.status_code == 500
        body = response.json()
        assert body["request_id"] == "req-7"
        assert "Traceback" not in response.text and "negative input" not in response.text
        assert client.post("/double", json={"x": 3}).json() == {"y": 6}


def test_wrong_response_shape_is_500():
    @gpu_service(name="sloppy", route="/double")
    class Sloppy(ModelServer[NumIn, NumOut]):
        def predict(self, item: NumIn) -> NumOut:
            return {"z": 1}  # type: ignore[return-value]

    with TestClient(Sloppy.asgi_app()) as client:
        wait_ready(client)
        response = client.post("/double", json={"x": 1})
        assert response.status_code == 500
        assert response.json()["request_id"]


def test_dict_results_are_validated_into_the_response_model():
    @gpu_service(name="dicts", route="/double")
    class Dicts(ModelServer[NumIn, NumOut]):
        def predict(self, item: NumIn) -> NumOut:
            return {"y": str(item.x)}  # type: ignore[return-value]

    with TestClient(Dicts.asgi_app()) as client:
        wait_ready(client)
        assert client.post("/double", json={"x": 5}).json() == {"y": 5}


def test_deadline_is_504():
    with TestClient(sleeper(1.0, request_timeout=0.2).asgi_app()) as client:
        wait_ready(client)
        start = time.monotonic()
        response = client.post("/double", json={"x": 1})
        assert response.status_code == 504
        assert time.monotonic() - start < 0.9
        assert "request_timeout=0.2" in response.json()["detail"]


def test_full_queue_is_503_with_retry_after(probe):
    probe.gate.clear()
    router = doubler(probe, max_batch_size=1, max_queue_size=1).router()
    app = FastAPI()
    app.include_router(router)
    with TestClient(app) as client, ThreadPoolExecutor(4) as pool:
        wait_ready(client)
        running = pool.submit(client.post, "/double", json={"x": 1})
        assert probe.entered.wait(5)
        queued = pool.submit(client.post, "/double", json={"x": 2})
        batcher = router.backend.batcher  # type: ignore[attr-defined]
        for _ in range(500):
            if batcher.queue_size == 1:
                break
            time.sleep(0.01)
        rejected = client.post("/double", json={"x": 3})
        assert rejected.status_code == 503
        assert rejected.headers["retry-after"] == "1"
        assert "queue is full" in rejected.json()["detail"]
        probe.gate.set()
        assert running.result(5).json() == {"y": 2}
        assert queued.result(5).json() == {"y": 4}
    assert probe.batches == [[1], [2]]


def test_concurrent_requests_are_batched_and_answered_in_order(probe):
    probe.gate.clear()
    cls = doubler(probe, max_batch_size=8, wait_ms=50)
    with TestClient(cls.asgi_app()) as client, ThreadPoolExecutor(16) as pool:
        wait_ready(client)
        first = pool.submit(client.post, "/double", json={"x": 0})
        assert probe.entered.wait(5)
        rest = [pool.submit(client.post, "/double", json={"x": x}) for x in range(1, 17)]
        time.sleep(0.3)
        probe.gate.set()
        results = [f.result(10).json()["y"] for f in [first, *rest]]
    assert results == [2 * x for x in range(17)]
    assert max(len(b) for b in probe.batches) == 8
    assert len(probe.batches) < 17


def test_mounts_under_a_prefix_in_an_existing_app(probe):
    frozen_before = gc.get_freeze_count()
    app = FastAPI()

    @app.get("/own")
    def own() -> dict[str, bool]:
        return {"own": True}

    app.include_router(doubler(probe).router(), prefix="/ml")
    with TestClient(app) as client:
        wait_ready(client, "/ml/readyz")
        assert client.get("/own").json() == {"own": True}
        assert client.post("/ml/double", json={"x": 4}).json() == {"y": 8}
        assert client.get("/ml/healthz").status_code == 200
        assert client.post("/double", json={"x": 4}).status_code == 404
        # Process-wide tunings belong to whoever owns the process, not to a mounted router.
        assert gc.get_freeze_count() == frozen_before


def test_openapi_is_typed_from_the_models(probe):
    with TestClient(doubler(probe).asgi_app()) as client:
        spec = client.get("/openapi.json").json()
        operation = spec["paths"]["/double"]["post"]
        request_ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        response_ref = operation["responses"]["200"]["content"]["application/json"]["schema"][
            "$ref"
        ]
        assert request_ref.endswith("/NumIn") and response_ref.endswith("/NumOut")
        assert {"413", "422", "500", "503", "504"} <= set(operation["responses"])
        assert client.get("/docs").status_code == 200


def test_async_hooks_are_supported():
    calls: list[str] = []

    @gpu_service(name="async-model", route="/double", max_batch_size=4)
    class AsyncModel(ModelServer[NumIn, NumOut]):
        async def load(self) -> None:
            calls.append("load")

        async def predict_batch(self, items: list[NumIn]) -> list[NumOut]:
            return [NumOut(y=i.x + 1) for i in items]

        async def unload(self) -> None:
            calls.append("unload")

    with TestClient(AsyncModel.asgi_app()) as client:
        wait_ready(client)
        assert client.post("/double", json={"x": 1}).json() == {"y": 2}
    assert calls == ["load", "unload"]


def test_sync_hooks_run_on_one_inference_thread():
    threads: set[str] = set()

    @gpu_service(name="threads", route="/double", max_batch_size=2)
    class Threads(ModelServer[NumIn, NumOut]):
        def load(self) -> None:
            threads.add(threading.current_thread().name)

        def predict_batch(self, items: list[NumIn]) -> list[NumOut]:
            threads.add(threading.current_thread().name)
            return [NumOut(y=i.x) for i in items]

        def unload(self) -> None:
            threads.add(threading.current_thread().name)

    with TestClient(Threads.asgi_app()) as client, ThreadPoolExecutor(4) as pool:
        wait_ready(client)
        list(pool.map(lambda x: client.post("/double", json={"x": x}), range(8)))
    assert len(threads) == 1 and next(iter(threads)).startswith("mfk-inference")
