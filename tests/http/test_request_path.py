"""What the kit's own app leaves out of each request: FastAPI's OpenTelemetry probe (unless
the environment configures OpenTelemetry) and, in mfk serve, forwarded headers (unless
--proxy-headers names the proxies)."""

from __future__ import annotations

import json
import os

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from modal_fastapi_kit import ModelServer, gpu_service
from modal_fastapi_kit._assembly import opentelemetry_configured

from .._servers import BIN, free_port, running, wait_ready


class Ping(BaseModel):
    text: str


class Pong(BaseModel):
    text: str


@gpu_service(name="echo", route="/echo")
class Echo(ModelServer[Ping, Pong]):
    def predict(self, item: Ping) -> Pong:
        return Pong(text=item.text)


def test_opentelemetry_counts_as_configured_with_any_otel_variable():
    assert not opentelemetry_configured({"PATH": "/bin", "MODAL_TOKEN_ID": "x"})
    assert opentelemetry_configured({"OTEL_SERVICE_NAME": "embeddings"})
    assert opentelemetry_configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})


@pytest.mark.parametrize(("environ", "probed"), [({}, False), ({"OTEL_SERVICE_NAME": "x"}, True)])
def test_fastapi_telemetry_follows_the_environment(monkeypatch, environ, probed):
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    app = Echo.asgi_app()
    assert app._telemetry["tracing"] is probed  # what FastAPI checks on each request
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("flag", "client"), [([], "127.0.0.1"), (["--proxy-headers", "127.0.0.1"], "203.0.113.9")]
)
def test_mfk_serve_trusts_forwarded_headers_only_when_told(flag, client):
    port = free_port()
    args = [str(BIN / "mfk"), "serve", "tests/services/loopy.py", "--port", str(port), *flag]
    with running([*args, "--access-log", "--log-format", "json"]) as server:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)
        httpx.post(f"{base}/loop", json={"x": 1}, headers={"x-forwarded-for": "203.0.113.9"})
        line = server.wait_for_line(r'"logger": "modal_fastapi_kit.access"', timeout=5)
    assert json.loads(line.string)["client"] == client
