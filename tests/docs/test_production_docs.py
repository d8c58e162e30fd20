"""Every code block in docs/production.md runs: the keyed class over real HTTP and as a Modal
deployment, the Secret command's key, the metrics mount in an existing app, the scrape config
through promtool, the access-log line's shape (the PromQL runs in test_metrics, on a real
Prometheus; the CORS middleware for an app of the user's own in http/test_cors)."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from modal_fastapi_kit._http.auth import MIN_KEY_LENGTH
from modal_fastapi_kit._modal.build import deployment
from modal_fastapi_kit.cli._loading import load_service

from .._servers import ROOT, ThreadedServer, wait_ready

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

DOC = (ROOT / "docs" / "production.md").read_text()
BLOCKS = re.findall(r"^ *```(\w+)\n(.*?)^ *```", DOC, flags=re.S | re.M)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
BASH = [code.strip() for lang, code in BLOCKS if lang == "bash"]
YAML = [code for lang, code in BLOCKS if lang == "yaml"]
TEXT = [code.strip() for lang, code in BLOCKS if lang == "text"]
PROMQL = [line.strip() for lang, code in BLOCKS if lang == "promql" for line in code.splitlines()]
KEY = "doc-key-0123456789abcdef"


def test_the_page_has_the_blocks_these_tests_run():
    assert (len(PYTHON), len(BASH), len(YAML), len(TEXT), len(PROMQL)) == (3, 1, 1, 1, 4)


@pytest.fixture
def lengths(tmp_path: Path) -> type:
    (tmp_path / "lengths.py").write_text(PYTHON[0])
    return load_service(str(tmp_path / "lengths.py"))


def test_the_keyed_class_refuses_without_a_key_and_answers_with_one(lengths, monkeypatch):
    monkeypatch.setenv("MFK_API_KEYS", KEY)
    with ThreadedServer(lengths.asgi_app()) as server:
        wait_ready(server.url)
        assert httpx.post(f"{server.url}/length", json={"text": "abc"}).status_code == 401
        keyed = httpx.post(f"{server.url}/length", json={"text": "abc"}, headers={"x-api-key": KEY})
        assert keyed.json() == {"length": 3}
        assert httpx.get(f"{server.url}/metrics").status_code == 401
        assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_the_keyed_class_attaches_the_secret_the_command_creates(lengths):
    name = re.match(r"modal secret create (\S+) MFK_API_KEYS=", BASH[0])
    assert name is not None
    built = deployment(lengths)
    assert f"modal.Secret.from_name('{name.group(1)}')" in built.web_function.info().secrets
    script = re.search(r"python -c '([^']+)'", BASH[0])
    assert script is not None
    key = subprocess.run(
        [sys.executable, "-c", script.group(1)], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert len(key) >= MIN_KEY_LENGTH and "," not in key


def test_the_existing_app_serves_the_kits_metrics():
    namespace: dict[str, object] = {}
    exec(compile(PYTHON[1], "production.md", "exec"), namespace)
    with ThreadedServer(namespace["app"]) as server:
        wait_ready(server.url, "/ml/readyz")
        assert httpx.post(f"{server.url}/ml/embed", json={"text": "hi"}).status_code == 200
        scraped = httpx.get(f"{server.url}/metrics")
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain; version=")
    count = re.search(
        r'^mfk_batch_size_count\{service="embeddings-api"\} (\S+)$', scraped.text, re.M
    )
    assert count is not None and float(count.group(1)) >= 1


def test_the_scrape_config_is_valid_for_prometheus(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: make system-deps (apt-get install prometheus)")
    (tmp_path / "prometheus.yml").write_text(YAML[0])
    checked = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_access_line_has_the_documented_shape(lengths, monkeypatch, caplog):
    monkeypatch.setenv("MFK_API_KEYS", KEY)
    caplog.set_level(logging.INFO, logger="modal_fastapi_kit.access")
    with ThreadedServer(lengths.asgi_app()) as server:
        wait_ready(server.url)
        httpx.post(f"{server.url}/length", json={"text": "abc"}, headers={"x-api-key": KEY})
    lines = [r.getMessage() for r in caplog.records if r.name == "modal_fastapi_kit.access"]
    number = r"\d+(?:\.\d+)?"
    shape = r"\S+".join(re.escape(part) for part in re.split(r"rid=\S+|/embed", TEXT[0]))
    shape = re.sub(r"\d+(?:\\\.\d+)?", lambda _: number, shape)
    assert len(lines) == 1 and re.fullmatch(shape, lines[0]), (shape, lines)
