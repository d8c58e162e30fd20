"""Faults over real HTTP (uvicorn on 127.0.0.1): a failing item among many, input the model
refuses, a model that hangs, and clients that leave while their requests are queued."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from modal_fastapi_kit import InputError, ModelServer, gpu_service

from .._servers import ThreadedServer, raw_post, wait_ready
from .._toys import NumIn, NumOut

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

BAD = -7  # the one input predict_batch cannot take


@gpu_service(name="strict", route="/double", max_batch_size=16, wait_ms=2)
class Strict(ModelServer[NumIn, NumOut]):
    """Raises for a whole batch that holds BAD, as a model would on input it chokes on."""

    def predict_batch(self, items: list[NumIn]) -> list[NumOut]:
        time.sleep(0.002 * len(items))  # long enough for batches to form under load
        if any(item.x == BAD for item in items):
            raise RuntimeError("index out of range in self")
        if any(item.x > 1000 for item in items):
            return [
                InputError(f"x={i.x} is over 1000", status_code=400)  # type: ignore[misc]
                if i.x > 1000
                else NumOut(y=2 * i.x)
                for i in items
            ]
        return [NumOut(y=2 * item.x) for item in items]


@pytest.fixture(scope="module")
def strict() -> Iterator[ThreadedServer]:
    with ThreadedServer(Strict.asgi_app()) as server:
        wait_ready(server.url)
        yield server


async def _post_all(url: str, xs: list[int]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(xs))
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        return await asyncio.gather(*(client.post("/double", json={"x": x}) for x in xs))


def test_one_failing_item_among_64_concurrent_fails_alone_in_every_round(strict):
    for round_ in range(5):
        xs = list(range(64))
        xs[17 + round_ * 9] = BAD
        responses = asyncio.run(_post_all(strict.url, xs))
        statuses = [r.status_code for r in responses]
        assert statuses.count(500) == 1, (round_, statuses)
        assert statuses[xs.index(BAD)] == 500
        for x, response in zip(xs, responses, strict=True):
            if x != BAD:
                assert response.json() == {"y": 2 * x}, (round_, x, response.text)
        failed = responses[xs.index(BAD)]
        assert failed.json()["request_id"] == failed.headers["x-request-id"]
        assert "index out of range" not in failed.text  # the cause stays in the log


def test_input_the_model_refuses_is_its_4xx_with_its_message(strict):
    responses = asyncio.run(_post_all(strict.url, [1, 5000, 3]))
    assert [r.status_code for r in responses] == [200, 400, 200]
    assert responses[1].json()["detail"] == "x=5000 is over 1000"
    assert responses[1].json()["request_id"] == responses[1].headers["x-request-id"]


# -- a model that hangs ----------------------------------------------------------------------

HANG = threading.Event()  # set: predict blocks until RELEASE
RELEASE = threading.Event()
ENTERED = threading.Event()


@gpu_service(
    name="hanging",
    route="/double",
    max_batch_size=1,
    request_timeout=20,
    stall_timeout=1,
    max_queue_size=4,
)
class Hanging(ModelServer[NumIn, NumOut]):
    def predict(self, item: NumIn) -> NumOut:
        if HANG.is_set():
            ENTERED.set()
            RELEASE.wait(60)
        return NumOut(y=item.x)


def test_a_hung_model_flips_health_to_503_answers_queued_requests_at_once_and_recovers():
    HANG.set()
    RELEASE.clear()
    ENTERED.clear()
    with ThreadedServer(Hanging.asgi_app()) as server:
        wait_ready(server.url)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert client.get("/healthz").status_code == 200

            def post(x: int) -> tuple[httpx.Response, float]:
                started = time.monotonic()
                with httpx.Client(base_url=server.url, timeout=30) as own:
                    return own.post("/double", json={"x": x}), time.monotonic() - started

            with _threads(4) as pool:
                stuck = pool.submit(post, 1)
                assert ENTERED.wait(5)
                queued = [pool.submit(post, x) for x in (2, 3)]
                began = time.monotonic()
                health = _poll_until(client, "/healthz", 503, within=4.0)
                flipped = time.monotonic() - began
                assert flipped < 3.0, flipped  # stall_timeout=1 plus the watchdog's beat
                assert health.json()["status"] == "stalled"
                assert "past stall_timeout=1s" in health.json()["detail"]
                ready = client.get("/readyz")
                assert ready.status_code == 503 and ready.json()["status"] == "stalled"
                for future in [stuck, *queued]:
                    response, took = future.result(10)
                    assert response.status_code == 503, response.text
                    assert took < 5.0  # not the 20 s request_timeout
                refused = client.post("/double", json={"x": 4})
                assert refused.status_code == 503
                assert "stuck" in refused.json()["detail"]
                HANG.clear()
                RELEASE.set()
                _poll_until(client, "/healthz", 200, within=5.0)
                assert client.get("/readyz").status_code == 200
                assert client.post("/double", json={"x": 5}).json() == {"y": 5}


def _poll_until(client: httpx.Client, path: str, status: int, within: float) -> httpx.Response:
    deadline = time.monotonic() + within
    while True:
        response = client.get(path)
        if response.status_code == status or time.monotonic() > deadline:
            assert response.status_code == status, response.text
            return response
        time.sleep(0.05)


class _threads:
    def __init__(self, n: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(n)

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self.pool

    def __exit__(self, *exc: object) -> None:
        RELEASE.set()  # never leave a request thread blocked behind the gate
        self.pool.shutdown(wait=True)


# -- clients that leave ----------------------------------------------------------------------

GATE = threading.Event()
GATE.set()
BUSY = threading.Event()


@gpu_service(name="gated", route="/double", max_batch_size=1, max_queue_size=2)
class Gated(ModelServer[NumIn, NumOut]):
    computed: list[int] = []  # noqa: RUF012

    def predict(self, item: NumIn) -> NumOut:
        BUSY.set()
        GATE.wait(30)
        type(self).computed.append(item.x)
        return NumOut(y=item.x)


def test_clients_that_leave_free_their_queue_place_at_once():
    Gated.computed = []
    GATE.clear()
    BUSY.clear()
    try:
        with ThreadedServer(Gated.asgi_app()) as server:
            wait_ready(server.url)
            running = raw_post(server.port, 0)  # takes the model
            assert BUSY.wait(5)
            for round_ in range(5):  # far more than max_queue_size=2 come and go
                gone = [raw_post(server.port, 100 * round_ + i) for i in (1, 2)]
                time.sleep(0.15)
                for sock in gone:  # queued, not refused: the places of the last round are free
                    sock.settimeout(0.2)
                    with pytest.raises(TimeoutError):
                        sock.recv(4096)
                full = httpx.post(f"{server.url}/double", json={"x": -1}, timeout=5)
                assert full.status_code == 503 and "queue is full" in full.json()["detail"]
                for sock in gone:
                    sock.close()
                time.sleep(0.15)  # the server notices the disconnects
            GATE.set()
            assert b"200 OK" in running.recv(4096)
            running.close()
            kept = httpx.post(f"{server.url}/double", json={"x": 7}, timeout=5)
            assert kept.json() == {"y": 7}
    finally:
        GATE.set()
    assert Gated.computed == [0, 7]  # none of the ten that left was computed


def test_a_body_that_fails_validation_is_422_with_the_request_id_even_if_unprintable(strict):
    for body in (b'{"x": "seven"}', b'{"x": "\\ud800"}', b'{"x": NaN}', b"{"):
        response = httpx.post(
            f"{strict.url}/double",
            content=body,
            headers={"content-type": "application/json", "x-request-id": "bad-1"},
        )
        assert response.status_code == 422, (body, response.text)
        assert response.headers["x-request-id"] == "bad-1"
        assert response.json()["request_id"] == "bad-1"
        assert response.json()["detail"][0]["loc"][0] == "body"


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b'{"x": "\xff\xfe"}', 400, "must be UTF-8 JSON"),  # not UTF-8
        (b"[" * 3000 + b"]" * 3000, 400, "nested at most"),  # deeper than the parser goes
        (b'{"x": 1, "pad": "' + b"a" * 2_000_000 + b'"}', 413, "over the limit of 1048576"),
    ],
)
def test_unreadable_and_oversized_bodies_answer_the_error_body(strict, body, status, says):
    response = httpx.post(
        f"{strict.url}/double", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert says in response.json()["detail"]
    assert response.json()["request_id"] == response.headers["x-request-id"]
