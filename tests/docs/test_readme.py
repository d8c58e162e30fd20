"""Every code block in the README runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from .._servers import BIN, ROOT, free_port, running, wait_ready

README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, flags=re.S)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
BASH = [code for lang, code in BLOCKS if lang == "bash"]

pytestmark = pytest.mark.e2e


def bash_block(containing: str) -> str:
    matches = [code for code in BASH if containing in code]
    assert len(matches) == 1, containing
    return matches[0]


def python_block(containing: str) -> str:
    matches = [code for code in PYTHON if containing in code]
    assert len(matches) == 1, containing
    return matches[0]


def test_the_readme_has_the_blocks_this_file_runs():
    assert len(PYTHON) == 6
    assert len(BASH) == 9


def test_quickstart_serves_with_mfk_and_answers_the_curl(tmp_path: Path):
    (tmp_path / "embeddings.py").write_text(PYTHON[0])
    serve = bash_block("mfk serve embeddings.py").split("#")[0].split()
    port = free_port()
    with running([str(BIN / serve[0]), *serve[1:], "--port", str(port)], cwd=tmp_path) as p:
        wait_ready(f"http://127.0.0.1:{port}", timeout=120)
        curl = bash_block("localhost:8000/embed").replace("localhost:8000", f"127.0.0.1:{port}")
        out = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith('{"embedding":[')
        body = httpx.post(f"http://127.0.0.1:{port}/embed", json={"text": "hi"}).json()
        assert len(body["embedding"]) == 384
    assert "Embedder ready" in p.output


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from examples import tiny_lm

    return tiny_lm.build(tmp_path_factory.mktemp("tiny-lm") / "model")


def test_mount_block_serves_both_services_under_the_prefix(tiny_lm_dir, monkeypatch):
    monkeypatch.setenv("TINY_LM_DIR", str(tiny_lm_dir))
    namespace: dict[str, object] = {}
    exec(compile(PYTHON[1], "README.md", "exec"), namespace)
    with TestClient(namespace["app"]) as client:  # type: ignore[arg-type]
        for _ in range(600):
            if client.get("/ml/readyz").status_code == 200:
                break
            time.sleep(0.05)
        assert set(client.get("/ml/readyz").json()["services"]) == {"Embedder", "Generator"}
        response = client.post("/ml/embed", json={"text": "hello"})
        assert response.status_code == 200
        assert len(response.json()["embedding"]) == 384
        streamed = client.post("/ml/generate", json={"prompt": "The lighthouse"})
        assert streamed.headers["content-type"].startswith("text/event-stream")
        assert streamed.text.startswith('data: {"index":0,')


def test_streaming_block_streams_words_and_refuses_a_blank_prompt(tmp_path: Path):
    (tmp_path / "words.py").write_text(PYTHON[2])
    port = free_port()
    with running([str(BIN / "mfk"), "serve", "words.py", "--port", str(port)], cwd=tmp_path):
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)
        response = httpx.post(f"{base}/words", json={"text": "to be or"}, timeout=10)
        assert response.text == "".join(f'data: {{"word":"{w}"}}\n\n' for w in ("to", "be", "or"))
        blank = httpx.post(f"{base}/words", json={"text": "  "}, timeout=10)
        assert blank.status_code == 422
        assert blank.json()["detail"] == "the prompt is blank"


def test_generate_block_streams_with_curl(tiny_lm_dir):
    serve, curl = bash_block("mfk serve examples/generate.py").strip().split("\n", 1)
    port = free_port()
    serve = serve.replace("8001", str(port))
    curl = curl.replace("localhost:8001", f"127.0.0.1:{port}")
    args = serve.split()
    with running([str(BIN / args[0]), *args[1:]], env={"TINY_LM_DIR": str(tiny_lm_dir)}):
        wait_ready(f"http://127.0.0.1:{port}", timeout=120)
        out = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    events = [line for line in out.stdout.split("\n\n") if line]
    assert len(events) > 5 and all(e.startswith('data: {"index":') for e in events)


def test_files_blocks_answer_curl_and_the_typed_client_with_a_thumbnail(tmp_path, monkeypatch):
    from PIL import Image

    (tmp_path / "thumbnails.py").write_text(python_block("class Thumbnails"))
    Image.radial_gradient("L").convert("RGB").resize((300, 200)).save(tmp_path / "cat.jpg")

    def thumbnail(size: int) -> bytes:
        with Image.open(tmp_path / "cat.jpg") as picture:
            picture.thumbnail((size, size))
            return picture.tobytes()

    def answered(path: Path) -> tuple[tuple[int, int], bytes]:
        with Image.open(path) as picture:
            assert picture.format == "PNG"
            return picture.size, picture.tobytes()

    serve, *curls = bash_block("mfk serve thumbnails.py").strip().splitlines()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = serve.split()
    with running([str(BIN / args[0]), *args[1:], "--port", str(port)], cwd=tmp_path) as p:
        wait_ready(base, timeout=60)
        for line, size in zip(curls, (64, 128), strict=True):  # -F size=64, then the default
            (tmp_path / "thumb.png").unlink(missing_ok=True)
            command = line.split("#")[0].replace("localhost:8000", f"127.0.0.1:{port}")
            out = subprocess.run(
                ["bash", "-c", f"{command} -sS -w '%{{http_code}}'"],
                capture_output=True,
                text=True,
                timeout=30,
                cwd=tmp_path,
            )
            assert (out.returncode, out.stdout) == (0, "200"), (out.stderr, p.output)
            got = answered(tmp_path / "thumb.png")
            assert max(got[0]) == size and got[1] == thumbnail(size)
        (tmp_path / "thumb.png").unlink()
        monkeypatch.chdir(tmp_path)
        monkeypatch.syspath_prepend(str(tmp_path))
        client_code = python_block("Thumbnails.client").replace("http://127.0.0.1:8000", base)
        try:
            exec(compile(client_code, "README.md", "exec"), {})
        finally:
            sys.modules.pop("thumbnails", None)  # the block imported the written module
        got = answered(tmp_path / "thumb.png")
        assert max(got[0]) == 64 and got[1] == thumbnail(64)


def test_jobs_block_submits_polls_and_downloads_the_corpus_with_curl(tmp_path: Path):
    import numpy as np

    serve, *curls = bash_block("localhost:8000/corpus/jobs").strip().splitlines()
    lines = [f"line {i}: a sentence to embed." for i in range(300)]
    (tmp_path / "texts.txt").write_text("\n".join(lines) + "\n")
    port = free_port()
    args = serve.split()
    env = {"MFK_JOBS_DB": str(tmp_path / "jobs.sqlite3")}
    with running([str(BIN / args[0]), *args[1:], "--port", str(port)], env=env) as p:
        wait_ready(f"http://127.0.0.1:{port}", timeout=120)
        printed = []
        for line in curls:
            command = line.split("#")[0].replace("localhost:8000", f"127.0.0.1:{port}")
            out = subprocess.run(
                ["bash", "-c", command], capture_output=True, text=True, timeout=60, cwd=tmp_path
            )
            assert out.returncode == 0, (command, out.stderr, p.output)
            printed.append(out.stdout)
        submitted = json.loads((tmp_path / "job.json").read_text())
        assert submitted["state"] in ("queued", "running"), submitted
        assert submitted["links"]["result"].startswith(f"http://127.0.0.1:{port}/corpus/jobs/")
        seen = json.loads(printed[1])
        assert sorted(seen) == ["progress", "state"] and seen["state"] in ("queued", "running")
        # 300 short lines take a few seconds: the long-poll waited for the job's end.
        vectors = np.load(tmp_path / "vectors.npy")
        assert vectors.shape == (300, 384) and vectors.dtype == np.float32
    assert "Traceback" not in p.output


def test_make_targets_named_in_the_readme_exist():
    block = bash_block("make serve")
    makefile = (ROOT / "Makefile").read_text()
    for target in re.findall(r"^make (\w+)", block, flags=re.M):
        assert re.search(rf"^{target}:", makefile, flags=re.M), target
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_install_lines_name_real_extras():
    block = bash_block("pip install")
    pyproject = (ROOT / "pyproject.toml").read_text()
    for extra in re.findall(r"modal-fastapi-kit\[(\w+)\]", block):
        assert re.search(rf"^{extra} = \[", pyproject, flags=re.M), extra


def test_modal_app_line_is_what_the_example_binds():
    example = (ROOT / "examples" / "embeddings.py").read_text()
    line = PYTHON[5].split("#")[0].strip()
    assert line in example


def test_check_and_deploy_lines(tmp_path: Path):
    check, deploy = (
        line.split("#")[0].split() for line in bash_block("mfk check").strip().splitlines()
    )
    out = subprocess.run(
        [str(BIN / check[0]), *check[1:]], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    assert "app embeddings-api" in out.stdout and "@modal.batched: up to 32" in out.stdout
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    env["HOME"] = str(tmp_path)  # no ~/.modal.toml: no credentials
    out = subprocess.run(
        [str(BIN / deploy[0]), *deploy[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert out.returncode == 1
    assert "modal token new" in out.stdout + out.stderr


def test_edge_block_writes_a_config(tmp_path: Path):
    block = bash_block("mfk edge").replace("XXXX", "readme-test-token")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("MFK_EDGE_SECRET", None)
    out = subprocess.run(
        ["bash", "-ec", block], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env
    )
    assert out.returncode == 0, out.stderr
    confs = list((tmp_path / "edge").rglob("*.conf"))
    assert confs, out.stdout
    text = "".join(p.read_text() for p in confs)
    assert "api.example.com" in text and "acme--embeddings-api.modal.run" in text
    assert "wk-readme-test-token" in text
