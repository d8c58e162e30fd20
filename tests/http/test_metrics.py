"""Prometheus metrics: what /metrics shows under load, per service, behind the keys, and a real
Prometheus server (Debian's) scraping the served example and answering for its series."""

from __future__ import annotations

import asyncio
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from modal_fastapi_kit import ModelServer, gpu_service

from .._servers import BIN, ThreadedServer, free_port, running, wait_ready
from .._toys import NumIn, NumOut
from ..docs.test_production_docs import PROMQL as PAGE_PROMQL
from ..edge_support.procs import running as running_logged

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

GATE = threading.Event()
GATE.set()


@gpu_service(name="metered", route="/double", max_batch_size=16, wait_ms=2)
class Metered(ModelServer[NumIn, NumOut]):
    def predict_batch(self, items: list[NumIn]) -> list[NumOut]:
        GATE.wait(10)
        time.sleep(0.01)
        return [NumOut(y=2 * i.x) if i.x >= 0 else ValueError("negative") for i in items]  # type: ignore[misc]


@gpu_service(name="metered-too", route="/triple")
class MeteredToo(ModelServer[NumIn, NumOut]):
    def predict(self, item: NumIn) -> NumOut:
        return NumOut(y=3 * item.x)


def samples(text: str, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    found = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                found.append((sample.labels, sample.value))
    return found


def value(text: str, name: str, **labels: str) -> float:
    (match,) = samples(text, name, **labels)
    return match[1]


@pytest.fixture
def served() -> Iterator[str]:
    with ThreadedServer(Metered.asgi_app()) as server:
        wait_ready(server.url)
        yield server.url


def test_metrics_under_load_show_batches_above_one_and_a_queue(served):
    GATE.clear()

    async def load() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=served, timeout=30) as client:
            first = asyncio.ensure_future(client.post("/double", json={"x": 0}))
            await asyncio.sleep(0.2)  # the model is held: the next ones queue
            rest = [
                asyncio.ensure_future(client.post("/double", json={"x": x})) for x in range(1, 40)
            ]
            await asyncio.sleep(0.3)
            during = await client.get("/metrics")
            GATE.set()
            answers = await asyncio.gather(first, *rest, client.post("/double", json={"x": -1}))
            return [during, *answers]

    during, *_ = asyncio.run(load())
    assert value(during.text, "mfk_queue_depth", service="metered") == 39
    assert value(during.text, "mfk_model_state", service="metered", state="ready") == 1
    after = httpx.get(f"{served}/metrics")
    assert after.headers["content-type"].startswith("text/plain; version=")
    text = after.text
    assert value(text, "mfk_requests_total", service="metered", route="/double", status="200") == 40
    assert value(text, "mfk_requests_total", service="metered", route="/double", status="500") == 1
    batches = value(text, "mfk_batch_size_count", service="metered")
    assert value(text, "mfk_batch_size_sum", service="metered") == 41
    assert batches < 41  # some batches held several items...
    assert value(text, "mfk_batch_size_bucket", service="metered", le="1.0") < batches
    assert value(text, "mfk_queue_wait_seconds_count", service="metered") == 41
    # Most items waited while the model was held (0.3 s): few in the smallest buckets.
    assert value(text, "mfk_queue_wait_seconds_bucket", service="metered", le="0.05") < 20
    assert value(text, "mfk_items_failed_total", service="metered", error="PredictError") == 1
    assert value(text, "mfk_queue_depth", service="metered") == 0
    assert value(text, "mfk_batch_cap", service="metered") == 16  # never out of memory
    assert (
        value(text, "mfk_request_duration_seconds_count", service="metered", route="/double") == 41
    )


def test_two_services_in_one_app_keep_their_series_apart():
    app = FastAPI()
    app.include_router(Metered.router(), prefix="/ml")
    app.include_router(MeteredToo.router(), prefix="/ml")
    from prometheus_client import make_asgi_app

    from modal_fastapi_kit import metrics_registry

    app.mount("/metrics", make_asgi_app(registry=metrics_registry))  # as docs/production.md
    with ThreadedServer(app) as server:
        wait_ready(server.url, "/ml/readyz")
        httpx.post(f"{server.url}/ml/triple", json={"x": 1})
        text = httpx.get(f"{server.url}/metrics/").text
    assert (
        value(text, "mfk_requests_total", service="metered-too", route="/triple", status="200") == 1
    )
    assert samples(text, "mfk_model_state", service="metered", state="ready")
    assert samples(text, "mfk_model_state", service="metered-too", state="ready")


@gpu_service(name="metered-keys", route="/double", auth="api-key")
class MeteredKeys(MeteredToo):
    pass


@gpu_service(name="metered-open", route="/double", auth="api-key", auth_metrics=False)
class MeteredOpen(MeteredToo):
    pass


@gpu_service(name="unmetered", route="/double", metrics=False)
class Unmetered(MeteredToo):
    pass


def test_metrics_sit_behind_the_keys_unless_told_otherwise(monkeypatch):
    monkeypatch.setenv("MFK_API_KEYS", "metrics-key-0123456789abcdef")
    with ThreadedServer(MeteredKeys.asgi_app()) as server:
        assert httpx.get(f"{server.url}/metrics").status_code == 401
        keyed = {"authorization": "Bearer metrics-key-0123456789abcdef"}
        assert httpx.get(f"{server.url}/metrics", headers=keyed).status_code == 200
    with ThreadedServer(MeteredOpen.asgi_app()) as server:
        assert httpx.get(f"{server.url}/metrics").status_code == 200
    with ThreadedServer(Unmetered.asgi_app()) as server:
        assert httpx.get(f"{server.url}/metrics").status_code == 404


PROMETHEUS_CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: embeddings
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""


def test_a_real_prometheus_scrapes_the_served_example(tmp_path: Path):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: make system-deps (apt-get install prometheus)")
    port, web = free_port(), free_port()
    (tmp_path / "prometheus.yml").write_text(PROMETHEUS_CONFIG.format(port=port))
    serve = [str(BIN / "mfk"), "serve", "examples/embeddings.py", "--port", str(port)]
    prometheus = [
        binary,
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{web}",
    ]
    with running(serve):
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)
        with running_logged(prometheus, tmp_path / "prometheus.log"):

            async def load() -> None:
                async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                    await asyncio.gather(
                        *(client.post("/embed", json={"text": f"sentence {i}"}) for i in range(48))
                    )

            asyncio.run(load())
            query = f"http://127.0.0.1:{web}/api/v1/query"
            deadline = time.monotonic() + 60
            result: list[dict[str, object]] = []
            while time.monotonic() < deadline:
                try:
                    answer = httpx.get(
                        query, params={"query": 'mfk_batch_size_sum{service="embeddings-api"}'}
                    ).json()
                    result = answer["data"]["result"]
                    if result and float(result[0]["value"][1]) >= 48:  # type: ignore[index]
                        break
                except (httpx.TransportError, KeyError):
                    pass
                time.sleep(0.5)
            assert result, (tmp_path / "prometheus.log").read_text()[-2000:]
            assert float(result[0]["value"][1]) >= 48  # type: ignore[index]
            buckets = httpx.get(
                query, params={"query": 'mfk_batch_size_bucket{service="embeddings-api",le="1.0"}'}
            ).json()["data"]["result"]
            count = httpx.get(
                query, params={"query": 'mfk_batch_size_count{service="embeddings-api"}'}
            ).json()["data"]["result"]
            assert float(buckets[0]["value"][1]) < float(count[0]["value"][1])  # batches > 1
            up = httpx.get(query, params={"query": 'up{job="embeddings"}'}).json()
            assert up["data"]["result"][0]["value"][1] == "1"
            for promql in PAGE_PROMQL:  # the Grafana queries of docs/production.md
                deadline = time.monotonic() + 30  # rate() needs two scrapes past the load
                while True:
                    answer = httpx.get(query, params={"query": promql}).json()
                    assert answer["status"] == "success", (promql, answer)
                    # The error share is empty without a 5xx; the quantiles fill in.
                    if answer["data"]["result"] or "quantile" not in promql:
                        break
                    assert time.monotonic() < deadline, f"no result for {promql}"
                    time.sleep(0.5)


def test_the_documented_series_are_the_ones_the_registry_has():
    from modal_fastapi_kit import metrics_registry

    from .._servers import ROOT

    text = (ROOT / "docs" / "production.md").read_text()
    documented = {
        re.sub(r"_total$", "", name)
        for name in re.findall(r"^\| `(mfk_[a-z_]+)\{", text, flags=re.M)
    }
    registered = {m.name for m in metrics_registry.collect() if m.name.startswith("mfk_")}
    assert documented == registered


@gpu_service(name="metered-load", route="/quadruple")
class MeteredLoad(MeteredToo):
    def load(self) -> None:
        time.sleep(0.05)


def test_the_load_phases_are_a_gauge_by_phase():
    with ThreadedServer(MeteredLoad.asgi_app()) as server:
        wait_ready(server.url)
        text = httpx.get(f"{server.url}/metrics").text
    phases = {
        labels["phase"]: seconds
        for labels, seconds in samples(text, "mfk_load_seconds", service="metered-load")
    }
    assert list(phases) == ["load", "to_device", "warmup"]
    assert phases["load"] >= 0.05 and phases["warmup"] >= 0
