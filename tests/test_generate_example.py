"""examples/generate.py: a real (tiny, offline) causal LM streaming greedy text, served with
``mfk serve`` over real HTTP, and as a Modal container runs it."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ._servers import BIN, ROOT, free_port, no_modal_credentials, running, wait_ready

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

PROMPTS = [
    ("The lighthouse", 40),
    ("In the morning", 12),
    ("The keeper climbed the narrow stairs and", 30),
    ("Bread", 50),
    ("x", 20),
    ("A ship", 1),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from examples import tiny_lm

    return tiny_lm.build(tmp_path_factory.mktemp("tiny-lm") / "model")


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> dict[tuple[str, int], str]:
    """What transformers' own ``generate(do_sample=False)`` continues each prompt with."""
    from examples import tiny_lm

    model, tokenizer = tiny_lm.load(model_dir)
    return {
        (prompt, n): tiny_lm.reference_text(model, tokenizer, prompt, n) for prompt, n in PROMPTS
    }


@pytest.fixture(scope="module")
def served(model_dir: Path) -> Iterator[str]:
    port = free_port()
    args = [str(BIN / "mfk"), "serve", "examples/generate.py", "--port", str(port)]
    with running(args, env={"TINY_LM_DIR": str(model_dir)}) as server:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)
        server.wait_for_line(r"Generator ready in", timeout=10)
        yield base


def pieces(body: str) -> list[dict[str, object]]:
    return [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_streams_the_greedy_continuation_piece_by_piece(served, reference):
    done = subprocess.run(
        ["curl", "-sN", "-X", "POST", f"{served}/generate", "-H",
         "content-type: application/json",
         "-d", '{"prompt": "The lighthouse", "max_new_tokens": 40}'],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    got = pieces(done.stdout)
    assert [p["index"] for p in got] == list(range(len(got)))
    assert len(got) > 10  # one event per piece, not one blob
    assert "".join(str(p["text"]) for p in got) == reference[("The lighthouse", 40)]


def test_concurrent_streams_share_model_steps_and_each_gets_its_own_text(served, reference):
    async def generate_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=served, timeout=60) as client:
            return await asyncio.gather(
                *(
                    client.post("/generate", json={"prompt": p, "max_new_tokens": n})
                    for _ in range(3)
                    for p, n in PROMPTS
                )
            )

    responses = asyncio.run(generate_all())
    for (prompt, n), response in zip(PROMPTS * 3, responses, strict=True):
        assert response.status_code == 200
        text = "".join(str(p["text"]) for p in pieces(response.text))
        assert text == reference[(prompt, n)], prompt


def test_ndjson_and_a_prompt_over_the_context_is_422(served, reference):
    response = httpx.post(
        f"{served}/generate",
        json={"prompt": "In the morning", "max_new_tokens": 12},
        headers={"accept": "application/x-ndjson"},
        timeout=30,
    )
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert "".join(line["text"] for line in lines) == reference[("In the morning", 12)]
    too_long = httpx.post(
        f"{served}/generate", json={"prompt": "word " * 300, "max_new_tokens": 200}, timeout=30
    )
    assert too_long.status_code == 422
    assert "must fit the model's context of 256 tokens" in too_long.json()["detail"]


def test_a_client_that_leaves_does_not_hold_the_model(served, reference):
    with (
        httpx.Client(base_url=served, timeout=30) as client,
        client.stream(
            "POST", "/generate", json={"prompt": "The lighthouse", "max_new_tokens": 200}
        ) as response,
    ):
        next(response.iter_lines())
    after = httpx.post(
        f"{served}/generate", json={"prompt": "Bread", "max_new_tokens": 50}, timeout=30
    )
    assert "".join(str(p["text"]) for p in pieces(after.text)) == reference[("Bread", 50)]


def test_in_a_modal_container_the_stream_method_gives_the_same_text(
    model_dir, reference, monkeypatch
):
    monkeypatch.setenv("TINY_LM_DIR", str(model_dir))
    from examples.generate import Generator

    from .modal_container import ModalContainer

    with ModalContainer(Generator) as container:
        envelopes = list(
            container.stream("mfk_stream", {"prompt": "The lighthouse", "max_new_tokens": 40})
        )
    assert all("chunk" in e for e in envelopes)
    text = "".join(e["chunk"]["text"] for e in envelopes)
    assert text == reference[("The lighthouse", 40)]


CONTAINER_IMPORT = textwrap.dedent(
    r"""
    import json, sys
    sys.path.insert(0, ".")
    from modal._partial_function import _PartialFunctionFlags as F
    from modal._runtime import user_code_imports
    from modal._utils.async_utils import synchronizer
    from modal.cls import _Cls
    from modal_proto import api_pb2

    FILE = api_pb2.Function.DEFINITION_TYPE_FILE
    class_def = api_pb2.Function(module_name="generate", implementation_name="Generator.*",
                                 app_name="generate-api", definition_type=FILE)
    found = user_code_imports._get_cls_or_user_cls(class_def, None)
    app = user_code_imports.get_active_app_fallback(class_def)
    built = found.__mfk_modal_deployment__
    service_function = synchronizer._translate_in(built.gpu_cls)._get_class_service_function()
    partials = _Cls._from_local(found, app, service_function)._get_partial_functions()
    web_def = api_pb2.Function(module_name="generate", implementation_name="Generator_web",
                               app_name="generate-api", definition_type=FILE)
    web = user_code_imports.import_single_function_service(web_def, None)
    print(json.dumps({
        "found": f"{found.__module__}.{found.__qualname__}",
        "partials": {name: {"enter": bool(pf.flags & F.ENTER_POST_SNAPSHOT),
                            "exit": bool(pf.flags & F.EXIT),
                            "batched": bool(pf.flags & F.BATCHED),
                            "generator": bool(pf.params.is_generator)}
                     for name, pf in partials.items()},
        "web_callable": web._user_defined_callable.__name__,
        "heavy_modules": sorted(m for m in ("torch", "transformers") if m in sys.modules),
    }))
    """
)


def test_modal_imports_the_streaming_class_and_its_web_function(tmp_path):
    shutil.copy(ROOT / "examples" / "generate.py", tmp_path / "generate.py")
    env = no_modal_credentials(tmp_path)
    env["PYTHONPATH"] = str(ROOT)  # the image ships `examples` (local_sources)
    done = subprocess.run(
        [sys.executable, "-c", CONTAINER_IMPORT],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["found"] == "generate.Generator"
    assert seen["partials"] == {
        "mfk_enter": {"enter": True, "exit": False, "batched": False, "generator": False},
        "mfk_exit": {"enter": False, "exit": True, "batched": False, "generator": False},
        "mfk_stream": {"enter": False, "exit": False, "batched": False, "generator": True},
    }
    assert seen["web_callable"] == "Generator_web"
    assert seen["heavy_modules"] == []
