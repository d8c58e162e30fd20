"""OriginLock and apply_origin_lock, in process (the real edges are in test_edge_proxies)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from modal_fastapi_kit import OriginLock, ServiceConfig, apply_origin_lock
from modal_fastapi_kit.exceptions import ConfigError

SECRET = "s3cret-" + "x" * 32
PUBLIC = "api.example.com"


def _app(**lock: object) -> TestClient:
    app = FastAPI()

    @app.get("/whoami", name="whoami")
    async def whoami(request: Request) -> dict[str, object]:
        return {
            "url_for": str(request.url_for("whoami")),
            "client": request.client.host if request.client else None,
            "secret_seen": "x-mfk-edge-secret" in request.headers,
        }

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(OriginLock, **lock)  # type: ignore[arg-type]
    return TestClient(app, base_url="https://ws--embeddings.modal.run")


def _edge(**extra: str) -> dict[str, str]:
    return {
        "x-mfk-edge-secret": SECRET,
        "x-forwarded-host": PUBLIC,
        "x-forwarded-proto": "https",
        "x-forwarded-for": "198.51.100.7, 10.0.0.1",
        **extra,
    }


def test_verified_request_gets_the_public_url_and_client() -> None:
    client = _app(secret=SECRET, public_hosts=[PUBLIC])
    body = client.get("/whoami", headers=_edge()).json()
    assert body == {
        "url_for": f"https://{PUBLIC}/whoami",
        "client": "198.51.100.7",
        "secret_seen": False,
    }


def test_public_port_from_forwarded_host_is_kept() -> None:
    client = _app(secret=SECRET, public_hosts=[PUBLIC])
    body = client.get("/whoami", headers=_edge(**{"x-forwarded-host": f"{PUBLIC}:8443"})).json()
    assert body["url_for"] == f"https://{PUBLIC}:8443/whoami"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-mfk-edge-secret": SECRET[:-1]},
        {"x-mfk-edge-secret": SECRET + "x"},
        {"x-mfk-edge-secret": ""},
    ],
    ids=["missing", "short", "long", "empty"],
)
def test_request_without_the_secret_is_refused_without_detail(headers: dict[str, str]) -> None:
    client = _app(secret=SECRET, public_hosts=[PUBLIC])
    response = client.get("/whoami", headers={**headers, "x-forwarded-host": PUBLIC})
    assert response.status_code == 403
    assert response.json() == {"detail": "forbidden", "code": "forbidden"}


def test_secret_sent_twice_is_refused() -> None:
    client = _app(secret=SECRET)
    response = client.get(
        "/whoami",
        headers=[("x-mfk-edge-secret", SECRET), ("x-mfk-edge-secret", "other")],
    )
    assert response.status_code == 403


def test_host_outside_public_hosts_is_not_trusted() -> None:
    client = _app(secret=SECRET, public_hosts=[PUBLIC])
    body = client.get("/whoami", headers=_edge(**{"x-forwarded-host": "evil.example"})).json()
    assert body["url_for"] == "https://ws--embeddings.modal.run/whoami"
    assert body["client"] == "testclient"


def test_healthz_stays_open_but_trusts_nothing() -> None:
    client = _app(secret=SECRET, public_hosts=[PUBLIC])
    assert client.get("/healthz").status_code == 200
    forged = {"x-forwarded-host": PUBLIC, "x-mfk-edge-secret": "nope"}
    assert client.get("/healthz", headers=forged).status_code == 200


def test_public_base_url_without_a_lock() -> None:
    client = _app(secret=None, public_base_url="https://api.example.com")
    forged = {"x-forwarded-host": "evil.example", "x-forwarded-proto": "http"}
    body = client.get("/whoami", headers=forged).json()
    assert body["url_for"] == "https://api.example.com/whoami"


def test_short_secret_is_rejected() -> None:
    with pytest.raises(ConfigError, match="at least 32"):
        OriginLock(FastAPI(), secret="short")


def _config(**options: object) -> ServiceConfig:
    return ServiceConfig.from_options({"name": "svc", **options})


def test_apply_origin_lock_reads_the_secret_from_the_named_env_var() -> None:
    config = _config(edge_secret_env="MY_EDGE_SECRET", public_hosts=[PUBLIC])
    app = FastAPI()

    @app.get("/whoami", name="whoami")
    async def whoami(request: Request) -> str:
        return str(request.url_for("whoami"))

    apply_origin_lock(app, config, environ={"MY_EDGE_SECRET": SECRET})
    client = TestClient(app)
    assert client.get("/whoami").status_code == 403
    assert client.get("/whoami", headers=_edge()).json() == f"https://{PUBLIC}/whoami"


def test_apply_origin_lock_fails_closed_when_the_secret_is_missing() -> None:
    config = _config(edge_secret_env="MY_EDGE_SECRET")
    with pytest.raises(ConfigError, match="MY_EDGE_SECRET"):
        apply_origin_lock(FastAPI(), config, environ={})


def test_apply_origin_lock_does_nothing_when_not_asked() -> None:
    app = FastAPI()
    apply_origin_lock(app, _config(), environ={})
    assert app.user_middleware == []


def test_websocket_without_the_secret_is_closed_and_with_it_sees_wss() -> None:
    app = FastAPI()

    @app.websocket("/ws", name="ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(str(websocket.url_for("ws")))
        await websocket.close()

    app.add_middleware(OriginLock, secret=SECRET, public_hosts=[PUBLIC])
    client = TestClient(app)
    with pytest.raises(WebSocketDisconnect), client.websocket_connect("/ws"):
        pass
    with client.websocket_connect("/ws", headers=_edge()) as socket:
        assert socket.receive_text() == f"wss://{PUBLIC}/ws"


def test_a_current_and_a_next_secret_are_both_accepted_during_a_rotation() -> None:
    current, following = SECRET, "next-edge-secret-0123456789abcdef-rotated"
    client = _app(secret=f"{current},{following}", public_hosts=[PUBLIC])
    for value in (current, following):
        assert client.get("/whoami", headers={"x-mfk-edge-secret": value}).status_code == 200
    assert client.get("/whoami", headers={"x-mfk-edge-secret": "x" * 40}).status_code == 403
    assert (
        client.get("/whoami", headers={"x-mfk-edge-secret": current + "," + following}).status_code
        == 403
    )
    with pytest.raises(ConfigError, match="an edge secret is 5 characters long"):
        OriginLock(FastAPI(), secret=f"{current},short")
