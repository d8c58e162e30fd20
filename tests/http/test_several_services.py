"""Several services in one FastAPI app: one load at a time, readiness that covers every
service at a path, a shared predict route refused at startup, one tag per service."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from modal_fastapi_kit import ModelServer, gpu_service
from modal_fastapi_kit.exceptions import ConfigError

from .._toys import NumIn, NumOut

RELEASE = threading.Event()


@gpu_service(name="fast-one", route="/double")
class FastOne(ModelServer[NumIn, NumOut]):
    def predict(self, item: NumIn) -> NumOut:
        return NumOut(y=2 * item.x)


@gpu_service(name="slow-one", route="/triple")
class SlowOne(ModelServer[NumIn, NumOut]):
    def load(self) -> None:
        RELEASE.wait(20)

    def predict(self, item: NumIn) -> NumOut:
        return NumOut(y=3 * item.x)


@gpu_service(name="same-route", route="/double")
class SameRoute(FastOne):
    pass


def app_with(*routers: object, prefixes: tuple[str, ...] = ()) -> FastAPI:
    app = FastAPI()
    for i, router in enumerate(routers):
        app.include_router(router, prefix=prefixes[i] if prefixes else "/ml")  # type: ignore[arg-type]
    return app


def until(client: TestClient, path: str, status: int) -> dict[str, object]:
    for _ in range(500):
        response = client.get(path)
        if response.status_code == status:
            return response.json()  # type: ignore[no-any-return]
        time.sleep(0.01)
    raise AssertionError(f"{path} never answered {status}: {response.text}")


def test_readiness_under_one_prefix_covers_both_services():
    RELEASE.clear()
    app = app_with(FastOne.router(), SlowOne.router())
    with TestClient(app) as client:
        # /ml/readyz is served by FastOne's route (the first), but answers for both.
        waiting = until(client, "/ml/readyz", 503)
        assert waiting["status"] == "loading"
        assert waiting["services"]["SlowOne"] == {"status": "loading"}
        for _ in range(500):  # FastOne loaded first (its lifespan started first)
            if client.get("/ml/readyz").json()["services"]["FastOne"] == {"status": "ready"}:
                break
            time.sleep(0.01)
        assert client.get("/ml/readyz").json()["services"]["FastOne"] == {"status": "ready"}
        assert client.post("/ml/double", json={"x": 2}).json() == {"y": 4}
        assert client.post("/ml/triple", json={"x": 2}).status_code == 503
        RELEASE.set()
        ready = until(client, "/ml/readyz", 200)
        assert ready == {
            "status": "ready",
            "services": {"FastOne": {"status": "ready"}, "SlowOne": {"status": "ready"}},
        }
        assert client.post("/ml/triple", json={"x": 2}).json() == {"y": 6}
        assert client.get("/ml/healthz").json()["services"] == {
            "FastOne": {"status": "ok"},
            "SlowOne": {"status": "ok"},
        }


def test_under_different_prefixes_each_probe_answers_for_its_own_service():
    RELEASE.clear()
    app = app_with(FastOne.router(), SlowOne.router(), prefixes=("/a", "/b"))
    with TestClient(app) as client:
        assert until(client, "/a/readyz", 200) == {"status": "ready"}
        assert client.get("/b/readyz").json() == {"status": "loading"}
        RELEASE.set()
        until(client, "/b/readyz", 200)


def test_two_services_answering_the_same_route_fail_at_startup():
    app = app_with(FastOne.router(), SameRoute.router())
    with (
        pytest.raises(ConfigError, match=r"SameRoute and FastOne both answer /ml/double"),
        TestClient(app),
    ):
        pass


def test_docs_show_each_service_under_its_own_tag_and_each_path_once():
    RELEASE.set()
    app = app_with(FastOne.router(), SlowOne.router())
    with TestClient(app) as client:
        until(client, "/ml/readyz", 200)
        spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    assert paths["/ml/double"]["post"]["tags"] == ["FastOne"]
    assert paths["/ml/triple"]["post"]["tags"] == ["SlowOne"]
    assert paths["/ml/double"]["post"]["summary"] == "FastOne: predict"
    assert paths["/ml/readyz"]["get"]["tags"] in (["FastOne"], ["SlowOne"])  # once, for both
    operation_ids = [op["operationId"] for item in paths.values() for op in item.values()]
    assert len(operation_ids) == len(set(operation_ids))
    assert len(operation_ids) == 4  # two predicts, one /ml/healthz, one /ml/readyz
