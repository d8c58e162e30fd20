"""The predict route's direct call: a valid JSON body skips FastAPI's generic handler, and
every other request (and every route with a dependency the kit did not add) still goes
through it, with the same answers."""

from __future__ import annotations

from collections.abc import Iterator

import fastapi.routing
import httpx
import pytest
from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel, Field

from modal_fastapi_kit import ModelServer, gpu_service

from .._servers import ThreadedServer, wait_ready

pytestmark = pytest.mark.e2e

KEY = "direct-key-0123456789abcdef"


class Order(BaseModel):
    sku: str = Field(min_length=1)
    count: int = Field(ge=1)
    note: str | None = None


class Receipt(BaseModel):
    total: int


@gpu_service(name="orders", route="/order", max_batch_size=4, wait_ms=1)
class Orders(ModelServer[Order, Receipt]):
    def predict_batch(self, items: list[Order]) -> list[Receipt]:
        return [Receipt(total=3 * item.count) for item in items]


@gpu_service(name="keyed-orders", route="/order", auth="api-key")
class KeyedOrders(Orders):
    pass


@pytest.fixture
def generic_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the requests FastAPI's generic handler solved dependencies for."""
    calls: list[int] = []
    solve = fastapi.routing.solve_dependencies

    async def counted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return await solve(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counted)
    return calls


@pytest.fixture
def two_apps() -> Iterator[tuple[str, str]]:
    """The router mounted as is, and behind a do-nothing dependency of the app's own."""

    async def nothing() -> None:
        return None

    direct, generic = FastAPI(), FastAPI()
    direct.include_router(Orders.router(), prefix="/ml")
    generic.include_router(Orders.router(), prefix="/ml", dependencies=[Depends(nothing)])
    with ThreadedServer(direct) as a, ThreadedServer(generic) as b:
        wait_ready(a.url, "/ml/readyz")
        wait_ready(b.url, "/ml/readyz")
        yield a.url, b.url


def test_a_valid_body_skips_the_generic_handler(two_apps, generic_calls):
    direct, _ = two_apps
    generic_calls.clear()
    answer = httpx.post(f"{direct}/ml/order", json={"sku": "a", "count": 2})
    assert answer.json() == {"total": 6}
    assert answer.headers["x-request-id"]
    assert generic_calls == []
    invalid = httpx.post(f"{direct}/ml/order", json={"sku": "a"})
    assert invalid.status_code == 422
    assert generic_calls == [1]  # the errors are FastAPI's own


BODIES = [
    b'{"sku": "a", "count": 2}',
    b'{"sku": "a", "count": "2"}',  # coerced the same way
    b'{"sku": "a", "count": 2, "extra": [1, 2]}',
    b'{"sku": "", "count": 2}',
    b'{"sku": "a", "count": 0}',
    b'{"sku": "a", "count": 2.5}',
    b'{"sku": "a"}',
    b'{"sku": "\\u00e9\\u4e2d", "count": 1, "note": null}',
    b'{"sku": "\\ud800", "count": 1}',  # a lone surrogate
    b'{"sku": "a", "count": NaN}',
    b'{"sku": "a", "count": 1',  # not JSON
    b"[]",
    b"",
    b"\xff\xfe",  # not UTF-8
]


@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8"])
def test_direct_and_generic_answer_the_same(two_apps, body, content_type):
    direct, generic = two_apps
    headers = {"content-type": content_type, "x-request-id": "same-id"}
    a = httpx.post(f"{direct}/ml/order", content=body, headers=headers)
    b = httpx.post(f"{generic}/ml/order", content=body, headers=headers)
    assert (a.status_code, a.json()) == (b.status_code, b.json())
    assert a.headers["content-type"] == b.headers["content-type"]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/vnd.api+json"])
def test_another_content_type_goes_the_generic_way(two_apps, generic_calls, content_type):
    direct, generic = two_apps
    generic_calls.clear()
    headers = {"content-type": content_type} if content_type else {}
    body = b'{"sku": "a", "count": 2}'
    a = httpx.post(f"{direct}/ml/order", content=body, headers=headers)
    b = httpx.post(f"{generic}/ml/order", content=body, headers=headers)
    assert (a.status_code, a.json().get("detail")) == (b.status_code, b.json().get("detail"))
    assert len(generic_calls) == 2


def test_a_dependency_of_the_app_still_runs_and_can_refuse():
    seen: list[str] = []

    async def audit(request: Request) -> None:
        seen.append(request.url.path)
        if request.url.path == "/order":
            raise HTTPException(status_code=403, detail="not today")

    app = FastAPI()
    app.include_router(Orders.router(), dependencies=[Depends(audit)])
    with ThreadedServer(app) as server:
        wait_ready(server.url)
        answer = httpx.post(f"{server.url}/order", json={"sku": "a", "count": 2})
    assert answer.status_code == 403
    assert seen[-1] == "/order"


def test_dependency_overrides_send_requests_the_generic_way(generic_calls):
    app = FastAPI()
    app.include_router(Orders.router())
    app.dependency_overrides[print] = print  # any override at all
    with ThreadedServer(app) as server:
        wait_ready(server.url)
        generic_calls.clear()
        answer = httpx.post(f"{server.url}/order", json={"sku": "a", "count": 2})
    assert answer.json() == {"total": 6}
    assert generic_calls == [1]


def test_keys_are_checked_on_the_direct_call(monkeypatch, generic_calls):
    monkeypatch.setenv("MFK_API_KEYS", KEY)
    with ThreadedServer(KeyedOrders.asgi_app()) as server:
        wait_ready(server.url)
        generic_calls.clear()
        url = f"{server.url}/order"
        body = {"sku": "a", "count": 1}
        missing = httpx.post(url, json=body)
        wrong = httpx.post(url, json=body, headers={"authorization": "Bearer nope-nope"})
        bearer = httpx.post(url, json=body, headers={"authorization": f"bearer  {KEY}"})
        header = httpx.post(url, json=body, headers={"x-api-key": KEY})
        basic = httpx.post(url, json=body, headers={"authorization": f"Basic {KEY}"})
    assert missing.status_code == wrong.status_code == basic.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    assert "required" in missing.json()["detail"] and "not valid" in wrong.json()["detail"]
    assert bearer.json() == header.json() == {"total": 3}
    assert generic_calls == []


# -- the front, in the apps the kit builds ------------------------------------------------


@gpu_service(name="locked-orders", route="/order", edge_secret_env="ORDERS_EDGE_SECRET")
class LockedOrders(Orders):
    pass


@pytest.fixture
def built_app() -> Iterator[str]:
    with ThreadedServer(Orders.asgi_app()) as server:
        wait_ready(server.url)
        yield server.url


@pytest.fixture
def exception_middleware_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths that went through Starlette's exception middleware (inside the front)."""
    from starlette.middleware.exceptions import ExceptionMiddleware

    calls: list[str] = []
    inner = ExceptionMiddleware.__call__

    async def counted(self: object, scope: dict, receive: object, send: object) -> None:
        calls.append(scope.get("path", ""))
        await inner(self, scope, receive, send)  # type: ignore[arg-type]

    monkeypatch.setattr(ExceptionMiddleware, "__call__", counted)
    return calls


def test_the_built_app_answers_a_valid_body_in_front_of_the_routing(
    built_app, exception_middleware_calls, generic_calls
):
    answer = httpx.post(f"{built_app}/order", json={"sku": "a", "count": 2})
    assert answer.json() == {"total": 6}
    assert exception_middleware_calls == [] and generic_calls == []
    handed = httpx.post(f"{built_app}/order", json={"sku": "a", "count": 0})
    assert handed.status_code == 422 and handed.json()["request_id"]
    assert exception_middleware_calls == ["/order"] and generic_calls == [1]
    assert httpx.get(f"{built_app}/healthz").status_code == 200


@pytest.mark.parametrize("body", BODIES)
def test_the_front_answers_as_the_mounted_router_does(built_app, two_apps, body):
    _, generic = two_apps
    headers = {"content-type": "application/json", "x-request-id": "same-id"}
    a = httpx.post(f"{built_app}/order", content=body, headers=headers)
    b = httpx.post(f"{generic}/ml/order", content=body, headers=headers)
    assert (a.status_code, a.json()) == (b.status_code, b.json())


def test_a_body_sent_in_chunks_reaches_the_app_whole_when_handed_back(built_app):
    def chunks() -> Iterator[bytes]:
        yield b'{"sku": "a", '
        yield b'"count": 0}'  # invalid: handed back after the front read it all

    answer = httpx.post(
        f"{built_app}/order", content=chunks(), headers={"content-type": "application/json"}
    )
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["body", "count"]


def test_the_origin_lock_still_guards_the_front(monkeypatch):
    monkeypatch.setenv("ORDERS_EDGE_SECRET", "edge-secret-0123456789abcdef-0123456789ab")
    with ThreadedServer(LockedOrders.asgi_app()) as server:
        body = {"sku": "a", "count": 1}
        refused = httpx.post(f"{server.url}/order", json=body)
        through = httpx.post(
            f"{server.url}/order",
            json=body,
            headers={"x-mfk-edge-secret": "edge-secret-0123456789abcdef-0123456789ab"},
        )
    assert refused.status_code == 403
    assert through.json() == {"total": 3}


def test_overrides_set_on_the_built_app_send_requests_through_it(generic_calls):
    app = Orders.asgi_app()
    app.dependency_overrides[print] = print
    with ThreadedServer(app) as server:
        wait_ready(server.url)
        generic_calls.clear()
        answer = httpx.post(f"{server.url}/order", json={"sku": "a", "count": 2})
    assert answer.json() == {"total": 6}
    assert generic_calls == [1]
