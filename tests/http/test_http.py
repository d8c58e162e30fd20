"""The router over real HTTP (uvicorn on 127.0.0.1): disconnects and concurrency."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from .._servers import ThreadedServer, raw_post
from .._toys import Probe, doubler


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
def served(probe: Probe) -> Iterator[ThreadedServer]:
    app = doubler(probe, max_batch_size=4, wait_ms=1).asgi_app()
    with ThreadedServer(app) as server:
        for _ in range(500):
            if httpx.get(f"{server.url}/readyz").status_code == 200:
                break
            time.sleep(0.01)
        yield server


def test_a_client_that_disconnects_while_queued_is_not_computed(served, probe):
    probe.gate.clear()
    running = raw_post(served.port, 1)
    assert probe.entered.wait(5)
    gone = raw_post(served.port, 2)
    time.sleep(0.2)  # let the server read the request and queue it
    gone.close()
    time.sleep(0.3)  # let the server notice the disconnect
    probe.gate.set()
    assert b"200 OK" in running.recv(4096)
    running.close()
    assert httpx.post(f"{served.url}/double", json={"x": 3}).json() == {"y": 6}
    assert probe.batches == [[1], [3]]


def test_many_concurrent_clients_each_get_their_own_answer(served, probe):
    async def main() -> list[int]:
        async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
            responses = await asyncio.gather(
                *(client.post("/double", json={"x": x}) for x in range(64))
            )
        return [r.json()["y"] for r in responses]

    assert asyncio.run(main()) == [2 * x for x in range(64)]
    assert max(len(b) for b in probe.batches) > 1, "concurrent requests should share batches"
    assert max(len(b) for b in probe.batches) <= 4
