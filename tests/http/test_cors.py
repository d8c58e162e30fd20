"""CORS in the apps the kit builds: a listed origin's preflight and request, any other origin
refused, credentials only when asked, the kit's refusals (401, 403, 413, 503, 500) readable by
the page, and a preflight answered before the keys, the origin lock, the limit, the model and
the metrics. The same layer in every app: ``Cls.asgi_app()``, the split topology's web
function, the colocated container and the Modal Server container; and the one middleware
docs/production.md tells a user to add to an app of their own."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from modal._utils.async_utils import synchronizer

from modal_fastapi_kit import ModelServer, gpu_service, metrics_registry
from modal_fastapi_kit._config import ServiceConfig
from modal_fastapi_kit._http.cors import CORS_EXPOSED_HEADERS, CORS_REQUEST_HEADERS
from modal_fastapi_kit._modal import server_container
from modal_fastapi_kit._modal.build import deployment
from modal_fastapi_kit.cli._serve import _limited
from modal_fastapi_kit.exceptions import ConfigError
from modal_fastapi_kit.testing import serve

from .._docs import block
from .._servers import ROOT, ThreadedServer, free_port, wait_ready
from .._toys import NumIn, NumOut, Probe, doubler
from ..modal_container import ModalContainer
from ..modal_server_container import ModalServerContainer

pytestmark = pytest.mark.timeout(60)

PAGE = "https://app.example.com"
OTHER = "https://elsewhere.example.com"
KEY = "cors-key-0123456789abcdef"
EDGE_SECRET = "cors-edge-secret-0123456789abcdefghij"
EXPOSED = ", ".join(CORS_EXPOSED_HEADERS)

PROBE = Probe()
Open = doubler(PROBE, cors_origins=[PAGE])


@gpu_service(name="cors-keyed", route="/double", auth="api-key", cors_origins=[PAGE])
class Keyed(ModelServer[NumIn, NumOut]):
    def predict(self, item: NumIn) -> NumOut:
        return NumOut(y=2 * item.x)


@gpu_service(
    name="cors-creds", route="/double", auth="api-key", cors_origins=[PAGE], cors_credentials=True
)
class Credentialed(Keyed):
    pass


@gpu_service(name="cors-small", route="/double", cors_origins=[PAGE], max_body_bytes=64)
class Small(Keyed):
    pass


@gpu_service(name="cors-locked", route="/double", cors_origins=[PAGE], edge_secret_env="CORS_EDGE")
class Locked(Keyed):
    pass


@gpu_service(name="cors-none", route="/double")
class NoCors(Keyed):
    pass


LOADING = threading.Event()


@gpu_service(name="cors-loading", route="/double", cors_origins=[PAGE])
class Loading(Keyed):
    def load(self) -> None:
        LOADING.wait(10)


@gpu_service(name="cors-split", route="/double", cors_origins=[PAGE])
class Split(Keyed):
    pass


@gpu_service(name="cors-colocated", route="/double", topology="colocated", cors_origins=[PAGE])
class Colocated(Keyed):
    pass


@gpu_service(
    name="cors-server", route="/double", topology="server", port=free_port(), cors_origins=[PAGE]
)
class OnServer(Keyed):
    pass


def preflight(
    client: httpx.Client, origin: str = PAGE, method: str = "POST", headers: str | None = None
) -> httpx.Response:
    asked = {"origin": origin, "access-control-request-method": method}
    if headers is not None:
        asked["access-control-request-headers"] = headers
    return client.options("/double", headers=asked)


def allowed(response: httpx.Response, origin: str = PAGE) -> None:
    """The answer a page on ``origin`` may read: its origin echoed, the kit's headers exposed."""
    assert response.headers["access-control-allow-origin"] == origin
    assert response.headers["access-control-expose-headers"] == EXPOSED
    assert "Origin" in response.headers["vary"]


def requests_counted(service: str) -> float:
    return sum(
        sample.value
        for family in metrics_registry.collect()
        if family.name == "mfk_requests"
        for sample in family.samples
        if sample.name == "mfk_requests_total" and sample.labels["service"] == service
    )


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MFK_API_KEYS", KEY)


@pytest.fixture
def open_app() -> Iterator[TestClient]:
    PROBE.batches.clear()
    with serve(Open) as client:
        yield client


# -- a listed origin ---------------------------------------------------------------------------


def test_a_listed_origin_s_preflight_gets_the_kits_methods_and_headers(open_app):
    asked = "content-type, authorization, x-api-key, x-request-id, modal-session-id"
    response = preflight(open_app, headers=asked)
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == PAGE
    assert response.headers["access-control-allow-methods"] == "GET, POST"
    allowed_headers = response.headers["access-control-allow-headers"].lower().split(", ")
    assert {h.lower() for h in CORS_REQUEST_HEADERS} <= set(allowed_headers)
    assert response.headers["access-control-max-age"] == "600"
    assert "access-control-allow-credentials" not in response.headers
    assert "Origin" in response.headers["vary"]


def test_a_listed_origin_s_request_is_answered_with_its_origin_and_the_exposed_headers(open_app):
    response = open_app.post("/double", json={"x": 21}, headers={"origin": PAGE})
    assert response.json() == {"y": 42}
    allowed(response)
    assert "access-control-allow-credentials" not in response.headers
    assert PROBE.batches == [[21]]
    readiness = open_app.get("/readyz", headers={"origin": PAGE})  # GET routes too
    assert readiness.status_code == 200
    allowed(readiness)


def test_a_request_without_an_origin_gets_no_cors_headers(open_app):
    response = open_app.post("/double", json={"x": 1})
    assert response.json() == {"y": 2}
    assert not [h for h in response.headers if h.startswith("access-control-")]


# -- anything else is refused --------------------------------------------------------------------


def test_another_origin_s_preflight_is_refused_without_an_allowed_origin(open_app):
    response = preflight(open_app, origin=OTHER, headers="content-type")
    assert response.status_code == 400
    assert response.text == "Disallowed CORS origin"
    assert "access-control-allow-origin" not in response.headers
    assert PROBE.batches == []


def test_another_origin_s_request_runs_but_its_answer_names_no_origin(open_app):
    # CORS decides what a page may read, not who may call: the browser withholds this answer.
    response = open_app.post("/double", json={"x": 3}, headers={"origin": OTHER})
    assert response.json() == {"y": 6}
    assert "access-control-allow-origin" not in response.headers
    assert "Origin" in response.headers["vary"]  # a cache keeps the two origins apart


@pytest.mark.parametrize(
    ("method", "headers", "refused"),
    [("DELETE", None, "method"), ("POST", "content-type, x-custom", "headers")],
)
def test_a_method_or_header_the_kit_does_not_take_is_refused(open_app, method, headers, refused):
    response = preflight(open_app, method=method, headers=headers)
    assert response.status_code == 400
    assert response.text == f"Disallowed CORS {refused}"


@pytest.mark.parametrize("origin", [PAGE.upper(), f"{PAGE}:8443", "http://app.example.com"])
def test_only_the_exact_origin_is_allowed(open_app, origin):
    assert preflight(open_app, origin=origin).status_code == 400


def test_without_cors_origins_there_is_no_cors(keys):
    with serve(NoCors) as client:
        response = preflight(client)
        assert response.status_code == 405  # the app's own answer: no route takes OPTIONS
        assert response.json()["code"] == "method_not_allowed"
        answered = client.post("/double", json={"x": 1}, headers={"origin": PAGE, "x-api-key": KEY})
        assert answered.json() == {"y": 2}
        assert not [h for h in answered.headers if h.startswith("access-control-")]


# -- credentials ---------------------------------------------------------------------------------


def test_credentials_are_allowed_only_with_cors_credentials(keys):
    with serve(Credentialed) as client:
        response = preflight(client, headers="authorization")
        assert response.status_code == 200
        assert response.headers["access-control-allow-credentials"] == "true"
        assert response.headers["access-control-allow-origin"] == PAGE  # never "*"
        headers = {"origin": PAGE, "authorization": f"Bearer {KEY}"}
        answered = client.post("/double", json={"x": 2}, headers=headers)
        assert answered.json() == {"y": 4}
        assert answered.headers["access-control-allow-credentials"] == "true"
        allowed(answered)
    with serve(Keyed) as client:
        assert "access-control-allow-credentials" not in preflight(client).headers
        answered = client.post("/double", json={"x": 2}, headers={"origin": PAGE, "x-api-key": KEY})
        assert "access-control-allow-credentials" not in answered.headers


@pytest.mark.parametrize(
    ("options", "wrong"),
    [
        ({"cors_origins": ["https://app.example.com/"]}, "cors_origins"),
        ({"cors_origins": ["*"]}, "cors_origins"),
        ({"cors_origins": "https://app.example.com"}, "cors_origins"),
        ({"cors_credentials": True}, "cors_credentials"),
    ],
)
def test_cors_options_that_cannot_work_are_refused(options, wrong):
    with pytest.raises(ConfigError, match=wrong):
        gpu_service(**options)(type("Bad", (Keyed,), {"__module__": __name__}))


# -- the kit's refusals carry the headers --------------------------------------------------------


def test_a_401_is_readable_by_the_page(keys):
    with serve(Keyed) as client:
        response = client.post(
            "/double", json={"x": 1}, headers={"origin": PAGE, "x-request-id": "cors-401"}
        )
        assert response.status_code == 401
        assert response.json()["code"] == "unauthorized"
        assert response.headers["x-request-id"] == "cors-401"
        allowed(response)


def test_a_413_is_readable_by_the_page():
    with serve(Small) as client:
        response = client.post("/double", json={"x": 1, "pad": "x" * 100}, headers={"origin": PAGE})
        assert response.status_code == 413
        assert response.json()["code"] == "body_too_large"
        allowed(response)


def test_a_503_and_its_retry_after_are_readable_by_the_page():
    LOADING.clear()
    try:
        with TestClient(Loading.asgi_app()) as client:
            response = client.post("/double", json={"x": 1}, headers={"origin": PAGE})
            assert response.status_code == 503
            assert response.json()["code"] == "not_ready"
            assert "Retry-After" in response.headers["access-control-expose-headers"]
            assert response.headers["retry-after"]
            allowed(response)
    finally:
        LOADING.set()


def test_a_500_from_starlette_s_error_middleware_is_readable_by_the_page():
    app = Open.asgi_app()

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("a route of the user's own failed")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom", headers={"origin": PAGE})
    assert response.status_code == 500
    allowed(response)


def test_the_origin_lock_s_403_is_readable_and_a_preflight_needs_no_secret(monkeypatch):
    monkeypatch.setenv("CORS_EDGE", EDGE_SECRET)
    with TestClient(Locked.asgi_app()) as client:
        refused = client.post("/double", json={"x": 1}, headers={"origin": PAGE})
        assert refused.status_code == 403
        allowed(refused)
        assert preflight(client, headers="content-type").status_code == 200


# -- a preflight touches nothing behind it -------------------------------------------------------


def test_a_preflight_needs_no_key_and_is_neither_computed_nor_counted(keys):
    with serve(Keyed) as client:
        before = requests_counted("cors-keyed")
        for _ in range(3):
            response = preflight(client, headers="x-api-key, content-type")
            assert response.status_code == 200
        assert requests_counted("cors-keyed") == before
        client.post("/double", json={"x": 1}, headers={"origin": PAGE})  # a 401, counted
        assert requests_counted("cors-keyed") == before + 1


@pytest.mark.e2e
def test_mfk_serve_s_limit_lets_preflights_through_and_its_503_is_readable():
    probe = Probe()
    app = _limited(doubler(probe, cors_origins=[PAGE]).asgi_app(), 1)
    with ThreadedServer(app) as server:
        wait_ready(server.url)
        probe.entered.clear()
        probe.gate.clear()
        held = threading.Thread(
            target=lambda: httpx.post(f"{server.url}/double", json={"x": 1}, timeout=20)
        )
        held.start()
        try:
            assert probe.entered.wait(10)  # the one request allowed at once is in the model
            with httpx.Client(base_url=server.url, timeout=10) as client:
                assert preflight(client, headers="content-type").status_code == 200
                over = client.post("/double", json={"x": 2}, headers={"origin": PAGE})
            assert over.status_code == 503
            assert over.json()["code"] == "overloaded"
            allowed(over)
        finally:
            probe.gate.set()
            held.join(20)
    assert probe.batches == [[1]]


# -- every app the kit builds ---------------------------------------------------------------------


def test_the_split_web_function_s_app_answers_cors():
    built = deployment(Split)
    web = synchronizer._translate_in(built.web_function)._raw_f_
    client = TestClient(web())  # no lifespan: a preflight needs no backend
    assert preflight(client).headers["access-control-allow-origin"] == PAGE
    assert "access-control-allow-origin" not in preflight(client, origin=OTHER).headers


def test_the_colocated_container_s_app_answers_cors():
    async def ask(app: object) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://c") as client:
            return await client.options(
                "/double", headers={"origin": PAGE, "access-control-request-method": "POST"}
            )

    with ModalContainer(Colocated) as container, container.web_app() as app:
        response = container.run(ask(app))
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == PAGE


def test_the_modal_server_container_s_app_answers_cors(monkeypatch):
    monkeypatch.setattr(server_container, "HOST", "127.0.0.1")
    url = f"http://127.0.0.1:{deployment(OnServer).config.port}"
    with ModalServerContainer(OnServer) as container:

        def ask() -> httpx.Response:
            with httpx.Client(base_url=url, timeout=5) as client:
                return preflight(client)

        response = container.serve_while(ask)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == PAGE


# -- an app of the user's own ---------------------------------------------------------------------


def test_the_middleware_the_docs_add_to_a_users_app_answers_cors_for_the_mounted_router():
    namespace: dict[str, object] = {}
    code = block(ROOT / "docs" / "production.md", "python", "CORSMiddleware")
    exec(compile(code, "production.md", "exec"), namespace)
    client = TestClient(namespace["app"])  # no lifespan: the model is not loaded
    asked = {"origin": PAGE, "access-control-request-method": "POST"}
    headers = "content-type, x-api-key, x-request-id"
    response = client.options(
        "/ml/embed", headers={**asked, "access-control-request-headers": headers}
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == PAGE
    assert client.options("/ml/embed", headers={**asked, "origin": OTHER}).status_code == 400
    loading = client.post("/ml/embed", json={"text": "hi"}, headers={"origin": PAGE})
    assert loading.status_code == 503  # the kit's not_ready, readable by the page
    allowed(loading)


def test_an_origin_written_in_capitals_is_kept_as_browsers_send_it():
    config = ServiceConfig.from_options({"name": "x", "cors_origins": ["HTTPS://App.Example.com"]})
    assert config.cors_origins == ("https://app.example.com",)
