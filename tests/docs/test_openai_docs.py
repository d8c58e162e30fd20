"""Every code block in docs/openai.md runs (the Modal one is built offline, not deployed)."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import math
import re
import subprocess
import time
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
from fastapi.testclient import TestClient

from modal_fastapi_kit._modal.build import HF_CACHE_PATH, deployment
from modal_fastapi_kit.cli._loading import load_service

from .._servers import BIN, ROOT, free_port, running, wait_ready

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

DOC = (ROOT / "docs" / "openai.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", DOC, flags=re.S)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
BASH = [code for lang, code in BLOCKS if lang == "bash"]
JSON = [code for lang, code in BLOCKS if lang == "json"]


def test_the_page_has_the_blocks_this_file_runs():
    assert (len(PYTHON), len(BASH), len(JSON)) == (9, 5, 1)


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from examples import tiny_lm

    return tiny_lm.build(tmp_path_factory.mktemp("tiny-lm") / "model")


@contextmanager
def serving(command: str, port_in_doc: int, env: dict[str, str] | None = None) -> Iterator[int]:
    """Run a ``mfk serve ... --port N`` line of the page on a free port instead of N."""
    port = free_port()
    args = command.split("#")[0].replace(str(port_in_doc), str(port)).split()
    with running([str(BIN / args[0]), *args[1:]], env=env):
        wait_ready(f"http://127.0.0.1:{port}", timeout=180)
        yield port


def run_block(code: str, port_in_doc: int, port: int) -> None:
    namespace: dict[str, object] = {}
    try:
        exec(compile(code.replace(str(port_in_doc), str(port)), "openai.md", "exec"), namespace)
    finally:
        for value in namespace.values():
            if isinstance(value, openai.OpenAI):
                value.close()


def test_the_embeddings_class_and_the_sdk_snippet(tmp_path):
    (tmp_path / "my_embeddings.py").write_text(PYTHON[0])
    port = free_port()
    args = [str(BIN / "mfk"), "serve", "my_embeddings.py", "--port", str(port)]
    with running(args, cwd=tmp_path):
        wait_ready(f"http://127.0.0.1:{port}")
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x") as client:
            response = client.embeddings.create(model="my-embedder", input=["a b", "ccc"])
    assert [d.embedding for d in response.data] == [[3.0] * 8, [3.0] * 8]
    assert response.usage.prompt_tokens == 3
    with serving(BASH[0], 8000) as port:
        run_block(PYTHON[1], 8000, port)


def test_the_chat_class_the_sdk_snippet_curl_and_the_error_example(tmp_path, tiny_lm_dir):
    (tmp_path / "echo_chat.py").write_text(PYTHON[2])
    port = free_port()
    with running([str(BIN / "mfk"), "serve", "echo_chat.py", "--port", str(port)], cwd=tmp_path):
        wait_ready(f"http://127.0.0.1:{port}")
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x") as client:
            answer = client.chat.completions.create(
                model="echo", messages=[{"role": "user", "content": "a b c"}]
            )
    assert answer.choices[0].message.content == "a b c "
    with serving(BASH[1], 8001, env={"TINY_LM_DIR": str(tiny_lm_dir)}) as port:
        run_block(PYTHON[3], 8001, port)
        curl = BASH[2].replace("localhost:8001", f"127.0.0.1:{port}")
        out = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60)
        assert out.stdout.endswith("data: [DONE]\n\n"), out.stdout
        refused = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"model": "tiny-chat", "messages": [{"role": "user", "content": "x"}], "n": 2},
        )
    assert refused.json() == json.loads(JSON[0])


def test_the_mount_block_lists_both_models_under_the_prefix(tiny_lm_dir, monkeypatch):
    monkeypatch.setenv("TINY_LM_DIR", str(tiny_lm_dir))
    namespace: dict[str, object] = {}
    exec(compile(PYTHON[4], "openai.md", "exec"), namespace)
    with TestClient(namespace["app"]) as client:  # type: ignore[arg-type]
        for _ in range(1200):
            if client.get("/llm/readyz").status_code == 200:
                break
            time.sleep(0.05)
        models = client.get("/llm/v1/models").json()
    assert sorted(m["id"] for m in models["data"]) == ["all-MiniLM-L6-v2", "tiny-chat"]


def test_the_real_model_class_builds_its_modal_deployment(tmp_path):
    (tmp_path / "qwen_chat.py").write_text(PYTHON[5])
    server_cls = load_service(str(tmp_path / "qwen_chat.py"))
    built = deployment(server_cls)
    info = built.gpu_cls().mfk_stream.info()
    assert info.gpus == [("L4", 1)]
    assert {path: mount.name for path, mount in info.volumes.items()} == {HF_CACHE_PATH: "hf-cache"}
    assert built.web_function is not None
    assert built.config.local_sources == ("examples",)  # the decoding loop ships with it
    assert "accelerate>=1.0" in built.packages


def speech_wav(path: Path) -> Path:
    """Two seconds of a rising tone between silences: 16-bit PCM mono at 16 kHz."""
    rate = 16_000
    tone = [
        round(16_000 * math.sin(2 * math.pi * (300 + 400 * t) * t))
        for t in (i / rate for i in range(2 * rate))
    ]
    samples = [0] * (rate // 4) + tone + [0] * (rate // 4)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"".join(s.to_bytes(2, "little", signed=True) for s in samples))
    return path


def test_the_transcription_class_the_sdk_snippet_and_curl(tmp_path, monkeypatch):
    (tmp_path / "my_transcriber.py").write_text(PYTHON[6])
    audio = speech_wav(tmp_path / "speech.wav")
    size = audio.stat().st_size
    port = free_port()
    args = [str(BIN / "mfk"), "serve", "my_transcriber.py", "--port", str(port)]
    with running(args, cwd=tmp_path):
        wait_ready(f"http://127.0.0.1:{port}")
        with openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0
        ) as client:
            api = client.audio.transcriptions
            with audio.open("rb") as file:
                verbose = api.create(model="whisper-1", file=file, response_format="verbose_json")
            with pytest.raises(openai.BadRequestError, match="not a WAV file"):
                api.create(model="whisper-1", file=("fake.wav", b"ID3..."))
            with pytest.raises(openai.BadRequestError, match="this server takes audio/wav"):
                api.create(model="whisper-1", file=("talk.mp3", b"ID3..."))
    assert verbose.text == f"{size} bytes"
    assert verbose.duration == (size - 44) / 32_000 == 2.5
    assert [(s.start, s.end) for s in verbose.segments or []] == [(0.0, 2.5)]
    monkeypatch.chdir(tmp_path)  # the snippet and curl open speech.wav
    with serving(BASH[3], 8002) as port:
        run_block(PYTHON[7], 8002, port)
        curl = BASH[4].replace("localhost:8002", f"127.0.0.1:{port}")
        out = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60)
    assert re.fullmatch(r"1\n00:00:00,\d{3} --> 00:00:0\d,\d{3}\n[A-Z][a-z ]+\.\n\n", out.stdout), (
        out.stdout
    )


def test_the_whisper_class_builds_its_modal_deployment_with_real_transformers_apis(tmp_path):
    code = PYTHON[8]
    (tmp_path / "whisper.py").write_text(code)
    server_cls = load_service(str(tmp_path / "whisper.py"))
    built = deployment(server_cls)
    info = built.gpu_cls().mfk_predict.info()
    assert info.gpus == [("L4", 1)]
    assert {path: mount.name for path, mount in info.volumes.items()} == {HF_CACHE_PATH: "hf-cache"}
    assert built.config.apt_packages == ("ffmpeg",)  # what ffmpeg_read runs
    assert built.config.max_batch_size == 16
    # Every name it imports from transformers exists, and is called with parameters it has.
    imported = {
        alias.name: node.module
        for node in ast.walk(ast.parse(code))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("transformers")
        for alias in node.names
    }
    assert set(imported) == {
        "AutoProcessor",
        "WhisperForConditionalGeneration",
        "pipeline",
        "ffmpeg_read",
    }
    found = {name: getattr(importlib.import_module(m), name) for name, m in imported.items()}
    assert list(inspect.signature(found["ffmpeg_read"]).parameters) == [
        "bpayload",
        "sampling_rate",
    ]
    from transformers import WhisperProcessor
    from transformers.pipelines import AutomaticSpeechRecognitionPipeline, Pipeline

    assert "return_tensors" in inspect.signature(WhisperProcessor.get_prompt_ids).parameters
    options = inspect.signature(AutomaticSpeechRecognitionPipeline._sanitize_parameters)
    assert {"chunk_length_s", "return_timestamps", "generate_kwargs"} <= set(options.parameters)
    assert "batch_size" in inspect.signature(Pipeline.__call__).parameters
