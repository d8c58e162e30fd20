"""examples/generate.py: a real (tiny, offline) causal LM streaming greedy text, served with
``mfk serve`` over real HTTP, and as a Modal container runs it; requests join the running batch
between its steps, and each one's text is still ``generate()``'s for its prompt."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from examples.generate import GenerateIn, Generator, Piece
from modal_fastapi_kit import ModelServer, gpu_service

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
# Prompts the tiny model continues for all of 200 tokens (no eos before): the long streams.
LONG = [("the", 200), ("them lit", 200), ("the narrow only", 200), ("trimmed it pages on", 200)]


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
        (prompt, n): tiny_lm.reference_text(model, tokenizer, prompt, n)
        for prompt, n in PROMPTS + LONG
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


def steps_above(base: str, size: int, service: str = "generate-api") -> float:
    """How many model steps so far held more than ``size`` streams (``mfk_batch_size``)."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    samples = {
        (s.name, s.labels.get("le")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("service") == service
    }
    bounds = sorted(
        float(le) for name, le in samples if name == "mfk_batch_size_bucket" and le != "+Inf"
    )
    below = max(b for b in bounds if b <= size)
    return samples[("mfk_batch_size_count", None)] - samples[("mfk_batch_size_bucket", str(below))]


class Read:
    """One request read over HTTP: its pieces and when the first and last arrived."""

    def __init__(self, prompt: str, n: int, leave_at: int) -> None:
        self.prompt, self.n, self.leave_at = prompt, n, leave_at
        self.texts: list[str] = []
        self.first = self.last = 0.0
        self.status = 0
        self.streaming = asyncio.Event()  # its first piece came


async def read(client: httpx.AsyncClient, found: Read, *, after: float = 0.0) -> Read:
    """POST after ``after`` seconds and read the stream (closing it after ``leave_at`` pieces,
    when set)."""
    await asyncio.sleep(after)
    loop = asyncio.get_running_loop()
    body = {"prompt": found.prompt, "max_new_tokens": found.n}
    async with client.stream("POST", "/generate", json=body) as response:
        found.status = response.status_code
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                found.texts.append(str(json.loads(line[6:])["text"]))
                found.first = found.first or loop.time()
                found.last = loop.time()
                found.streaming.set()
                if len(found.texts) == found.leave_at:
                    break
    return found


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


def test_requests_that_arrive_while_long_streams_run_join_them_and_keep_their_text(
    served, reference
):
    """Eight long streams; once all eight stream, newcomers at staggered times with mixed
    lengths; clients that leave mid-stream (two long ones, two newcomers). Every text read to
    its end is the greedy reference, what the others read is its start, and newcomers shared
    model steps with the eight (the generator form runs them in batches of their own)."""
    rng = random.Random(7)
    longs = [Read(*LONG[i % 4], leave_at=60 if i < 2 else 0) for i in range(8)]
    leaving = [2, 0, 0, 3] + [0] * 8
    newcomers = [Read(p, n, lead) for (p, n), lead in zip(PROMPTS * 2, leaving, strict=True)]
    before = steps_above(served, 8)

    async def run() -> None:
        async with httpx.AsyncClient(base_url=served, timeout=60) as client:
            running = [asyncio.ensure_future(read(client, r)) for r in longs]
            await asyncio.wait_for(asyncio.gather(*(r.streaming.wait() for r in longs)), 30)
            await asyncio.gather(
                *(read(client, r, after=0.3 * rng.random()) for r in newcomers), *running
            )

    asyncio.run(run())
    for got in longs + newcomers:
        expected = reference[(got.prompt, got.n)]
        assert got.status == 200, got.prompt
        if got.leave_at:  # it left: what it read is the start of the reference
            assert len(got.texts) == got.leave_at and expected.startswith("".join(got.texts))
        else:
            assert "".join(got.texts) == expected, got.prompt
    assert all(r.first < max(r.last for r in longs[2:]) for r in newcomers)
    assert steps_above(served, 8) > before  # a step held the eight and a newcomer


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
    from .modal_container import ModalContainer

    with ModalContainer(Generator) as container:
        envelopes = list(
            container.stream("mfk_stream", {"prompt": "The lighthouse", "max_new_tokens": 40})
        )
    assert all("chunk" in e for e in envelopes)
    text = "".join(e["chunk"]["text"] for e in envelopes)
    assert text == reference[("The lighthouse", 40)]


def test_in_a_modal_container_concurrent_streams_share_steps_and_keep_their_text(
    model_dir, reference, monkeypatch
):
    monkeypatch.setenv("TINY_LM_DIR", str(model_dir))
    from .modal_container import ModalContainer

    asks = [(*LONG[0], 0.0), (*LONG[1], 0.0), ("In the morning", 12, 0.05), ("Bread", 50, 0.1)]
    with ModalContainer(Generator) as container:
        stream = container.handle()().mfk_stream.remote_gen.aio

        async def text(prompt: str, n: int, after: float) -> str:
            await asyncio.sleep(after)
            envelopes = stream({"prompt": prompt, "max_new_tokens": n})
            return "".join([str(e["chunk"]["text"]) async for e in envelopes])

        async def every() -> list[str]:
            return await asyncio.gather(*(text(*ask) for ask in asks))

        before = _shared_steps()
        texts = container.run(every())
        after = _shared_steps()
    assert texts == [reference[(prompt, n)] for prompt, n, _ in asks]
    assert after > before  # steps held several streams: the container's own batcher joined them


def _shared_steps() -> float:
    """Steps of generate-api in this process that held more than one stream."""
    from modal_fastapi_kit._metrics import metrics_registry

    values = {
        (sample.name, sample.labels.get("le")): sample.value
        for family in metrics_registry.collect()
        for sample in family.samples
        if sample.labels.get("service") == "generate-api"
    }
    return values.get(("mfk_batch_size_count", None), 0.0) - values.get(
        ("mfk_batch_size_bucket", "1.0"), 0.0
    )


@gpu_service(
    name="generate-server",
    topology="server",
    port=free_port(),
    route="/generate",
    max_batch_size=16,
    max_concurrent_inputs=64,
)
class GeneratorServer(ModelServer[GenerateIn, Piece]):
    """The example's hooks on a Modal Server, where the container runs the kit's app as
    ``mfk serve`` does (not a subclass: the example's class carries its own Modal methods)."""

    load, warmup, join, step, leave = (
        Generator.load,
        Generator.warmup,
        Generator.join,
        Generator.step,
        Generator.leave,
    )
    _piece = staticmethod(Generator._piece)


def test_on_a_modal_server_streams_join_the_containers_running_batch(
    model_dir, reference, monkeypatch
):
    monkeypatch.setenv("TINY_LM_DIR", str(model_dir))
    from modal_fastapi_kit._modal import server_container

    from .modal_server_container import ModalServerContainer

    monkeypatch.setattr(server_container, "HOST", "127.0.0.1")  # not 0.0.0.0, here
    base = f"http://127.0.0.1:{GeneratorServer.service_config().port}"
    asks = [Read(*LONG[0], leave_at=0), Read(*LONG[1], leave_at=10)]
    asks += [Read(p, n, leave_at=0) for p, n in PROMPTS[:3]]

    def every() -> None:
        async def run() -> None:
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                await asyncio.gather(*(read(client, r, after=0.03 * i) for i, r in enumerate(asks)))

        asyncio.run(run())

    with ModalServerContainer(GeneratorServer) as container:
        container.serve_while(every)
        shared = container.serve_while(lambda: steps_above(base, 1, "generate-server"))
    for got in asks:
        expected = reference[(got.prompt, got.n)]
        if got.leave_at:
            assert expected.startswith("".join(got.texts)) and len(got.texts) == got.leave_at
        else:
            assert "".join(got.texts) == expected, got.prompt
    assert shared > 0  # steps held several streams


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
