"""API keys over real HTTP: 401 without one, either of two keys works, probes stay open,
/docs declares the schemes, and a service never starts open by accident."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from modal_fastapi_kit import ModelServer, gpu_service
from modal_fastapi_kit._modal.build import deployment
from modal_fastapi_kit.exceptions import ConfigError

from .._servers import ThreadedServer, wait_ready
from .._toys import NumIn, NumOut

pytestmark = pytest.mark.e2e

OLD_KEY = "old-key-0123456789abcdef"
NEW_KEY = "new-key-0123456789abcdef"


@gpu_service(name="keyed", route="/double", auth="api-key", api_keys_secret="doubler-keys")
class Keyed(ModelServer[NumIn, NumOut]):
    def predict(self, item: NumIn) -> NumOut:
        return NumOut(y=2 * item.x)


@gpu_service(name="keyed-ready", route="/double", auth="api-key", auth_readyz=True)
class KeyedReadyz(Keyed):
    pass


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("MFK_API_KEYS", f" {OLD_KEY}, {NEW_KEY} ")  # two during a rotation
    with ThreadedServer(Keyed.asgi_app()) as server:
        wait_ready(server.url)
        yield server.url


def test_without_a_key_the_predict_route_answers_401(served):
    response = httpx.post(f"{served}/double", json={"x": 1}, headers={"x-request-id": "r-1"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["x-request-id"] == "r-1"
    assert response.json() == {
        "detail": "a valid API key is required: send Authorization: Bearer <key> or X-API-Key",
        "code": "unauthorized",
        "request_id": "r-1",
    }


def test_a_wrong_key_is_401_and_says_nothing_about_the_right_ones(served):
    for headers in ({"authorization": "Bearer nope"}, {"x-api-key": OLD_KEY[:-1]}):
        response = httpx.post(f"{served}/double", json={"x": 1}, headers=headers)
        assert response.status_code == 401
        assert response.json()["detail"] == "the API key is not valid"


@pytest.mark.parametrize(
    "headers",
    [
        {"authorization": f"Bearer {OLD_KEY}"},
        {"authorization": f"Bearer {NEW_KEY}"},
        {"x-api-key": OLD_KEY},
        {"x-api-key": NEW_KEY},
    ],
)
def test_either_key_works_as_bearer_or_x_api_key(served, headers):
    response = httpx.post(f"{served}/double", json={"x": 21}, headers=headers)
    assert response.status_code == 200
    assert response.json() == {"y": 42}


def test_probes_stay_open(served):
    assert httpx.get(f"{served}/healthz").status_code == 200
    assert httpx.get(f"{served}/readyz").status_code == 200


def test_docs_declare_both_schemes_on_the_predict_route(served):
    spec = httpx.get(f"{served}/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["HTTPBearer"]["scheme"] == "bearer"
    assert schemes["APIKeyHeader"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "an API key",
    }
    assert {next(iter(s)) for s in spec["paths"]["/double"]["post"]["security"]} == {
        "HTTPBearer",
        "APIKeyHeader",
    }
    assert "security" not in spec["paths"]["/readyz"]["get"]
    assert "401" in spec["paths"]["/double"]["post"]["responses"]
    # Swagger UI draws its Authorize button from these schemes.
    assert httpx.get(f"{served}/docs").status_code == 200


def test_auth_readyz_closes_readiness_but_not_liveness(monkeypatch):
    monkeypatch.setenv("MFK_API_KEYS", NEW_KEY)
    with ThreadedServer(KeyedReadyz.asgi_app()) as server:
        wait_ready(server.url, path="/healthz")
        assert httpx.get(f"{server.url}/readyz").status_code == 401
        keyed = {"authorization": f"Bearer {NEW_KEY}"}
        for _ in range(200):
            if httpx.get(f"{server.url}/readyz", headers=keyed).status_code == 200:
                break
        assert httpx.get(f"{server.url}/readyz", headers=keyed).status_code == 200


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (None, r"\$MFK_API_KEYS holds no key.*doubler-keys"),
        (" , ", r"holds no key"),
        ("short", r"key of 5 characters; use keys of at least 16"),
    ],
)
def test_auth_on_without_usable_keys_refuses_to_build_the_router(monkeypatch, value, says):
    if value is None:
        monkeypatch.delenv("MFK_API_KEYS", raising=False)
    else:
        monkeypatch.setenv("MFK_API_KEYS", value)
    with pytest.raises(ConfigError, match=says):
        Keyed.router()


def test_the_keys_secret_goes_where_the_keys_are_checked():
    built = deployment(Keyed)
    assert "modal.Secret.from_name('doubler-keys')" in built.web_function.info().secrets
    gpu = built.gpu_cls().mfk_predict.info()
    assert "modal.Secret.from_name('doubler-keys')" not in gpu.secrets  # never called directly


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"api_keys_secret": "keys"}, r"auth='none'.*add auth='api-key'"),
        ({"auth": "basic"}, r"auth='basic' is invalid"),
        ({"auth": "api-key", "api_keys_env": "not a name"}, r"api_keys_env='not a name'"),
    ],
)
def test_auth_options_are_checked_at_decoration(options, says):
    with pytest.raises(ConfigError, match=says):

        @gpu_service(**options)
        class Bad(ModelServer[NumIn, NumOut]):
            def predict(self, item: NumIn) -> NumOut:
                return NumOut(y=item.x)
