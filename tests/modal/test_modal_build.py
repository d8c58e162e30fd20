"""The generated Modal objects, read back through Modal's public ``info()`` (no account needed).

Where ``info()`` does not report a setting (label, custom domains) the test reads the webhook
config Modal would send, from Modal's own objects.
"""

from __future__ import annotations

import ast
import asyncio
import datetime
import importlib.metadata
import inspect
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import modal
import pytest
from fastapi.testclient import TestClient
from modal._partial_function import _PartialFunctionFlags
from modal._utils.async_utils import synchronizer
from modal.cls import _Cls
from pydantic import BaseModel

from modal_fastapi_kit import END, ModelServer, RetryPolicy, gpu_service
from modal_fastapi_kit._config import ServiceConfig
from modal_fastapi_kit._modal.build import (
    HF_CACHE_PATH,
    RUNTIME_DISTRIBUTIONS,
    _retries,
    build_image,
    deployment,
    image_spec,
)
from modal_fastapi_kit._requirements import (
    builder_requirements_path,
    builder_version,
    image_environment,
    modal_runtime,
)
from modal_fastapi_kit.exceptions import ConfigError

from ..modal_container import ModalContainer


class NumIn(BaseModel):
    x: int


class NumOut(BaseModel):
    y: int


# -- services, at module level as Modal requires ---------------------------------------------


@gpu_service(
    name="split-batched",
    route="/double",
    gpu="A10",
    max_batch_size=8,
    wait_ms=7,
    cpu=2.0,
    memory=4096,
    timeout=120,
    startup_timeout=600,
    retries=RetryPolicy(max_retries=3, backoff_coefficient=1.5, initial_delay=2.0, max_delay=30.0),
    min_containers=1,
    max_containers=4,
    buffer_containers=1,
    scaledown_window=60,
    secrets=["hf-token"],
    volumes={"/weights": "my-weights"},
    hf_cache_volume="hf-cache",
    region=["us-east", "us-west"],
    cloud="aws",
    packages=["numpy==2.0.0", "FastAPI==0.115.0"],
    apt_packages=["git"],
    env={"MODE": "prod"},
    python_version="3.12",
)
class SplitBatched(ModelServer[NumIn, NumOut]):
    def predict_batch(self, items: list[NumIn]) -> list[NumOut]:
        if any(item.x < 0 for item in items):
            raise ValueError("negative input")
        return [NumOut(y=2 * item.x) for item in items]


@gpu_service(
    name="split-single",
    route="/double",
    gpu=["H100", "A100-80GB:2", "L40S"],
    max_concurrent_inputs=16,
    target_concurrent_inputs=8,
    retries=2,
    label="single-api",
    requires_proxy_auth=True,
    web_max_inputs=100,
)
class SplitSingle(ModelServer[NumIn, NumOut]):
    def predict(self, item: NumIn) -> NumOut:
        return NumOut(y=2 * item.x)


@gpu_service(
    name="colocated",
    route="/double",
    gpu="L4",
    topology="colocated",
    max_batch_size=4,
    max_concurrent_inputs=32,
    custom_domains=["api.example.com", "*.models.example.com"],
    requires_proxy_auth=True,
)
class Colocated(ModelServer[NumIn, NumOut]):
    loads = 0

    def load(self) -> None:
        type(self).loads += 1
        self.factor = 3

    def predict_batch(self, items: list[NumIn]) -> list[NumOut]:
        return [NumOut(y=self.factor * item.x) for item in items]


@gpu_service(name="snapshotted", route="/double", gpu="H100:2", enable_memory_snapshot=True)
class Snapshotted(ModelServer[NumIn, NumOut]):
    async def load(self) -> None:  # on the container's loop; the sync hooks on the thread
        await asyncio.sleep(0)
        self.hooks = ["load"]

    def to_device(self) -> None:
        self.hooks.append("to_device")

    def warmup(self) -> None:
        self.hooks.append("warmup")

    def predict(self, item: NumIn) -> NumOut:
        return NumOut(y=len(self.hooks) * item.x)


@gpu_service(name="plain-hooks", route="/double", gpu="T4")
class PlainHooks(ModelServer[NumIn, NumOut]):
    def load(self) -> None:
        self.hooks = ["load"]

    def to_device(self) -> None:
        self.hooks.append("to_device")

    def warmup(self) -> None:
        self.hooks.append("warmup")

    def predict(self, item: NumIn) -> dict[str, int]:  # dicts are validated into NumOut
        return {"y": item.x + 1}


@gpu_service(name="async-batched", route="/double", gpu="A10", max_batch_size=4)
class AsyncBatched(ModelServer[NumIn, NumOut]):
    """An async load() that starts a worker task; predict_batch hands it work on that loop."""

    unloads = 0

    async def load(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.jobs: asyncio.Queue[tuple[int, asyncio.Future[int]]] = asyncio.Queue()
        self.worker = asyncio.create_task(self.work())

    async def work(self) -> None:
        while True:
            x, answer = await self.jobs.get()
            answer.set_result(100 + x)

    async def predict_batch(self, items: list[NumIn]) -> list[NumOut]:
        assert asyncio.get_running_loop() is self.loop, "predict_batch runs on another loop"
        answers = []
        for item in items:
            answer = self.loop.create_future()
            await self.jobs.put((item.x, answer))
            answers.append(answer)
        return [NumOut(y=await asyncio.wait_for(a, 2)) for a in answers]

    async def unload(self) -> None:
        assert asyncio.get_running_loop() is self.loop
        self.worker.cancel()
        type(self).unloads += 1


# -- helpers -----------------------------------------------------------------------------------


def gpu_info(server_cls, method="mfk_predict"):
    return getattr(deployment(server_cls).gpu_cls(), method).info()


def partials(server_cls):
    built = deployment(server_cls)
    raw = synchronizer._translate_in(built.gpu_cls)
    local = _Cls._from_local(server_cls, raw._get_app(), raw._get_class_service_function())
    return local._get_partial_functions()


# -- the GPU class -----------------------------------------------------------------------------


def test_split_batched_gpu_class_carries_every_option():
    info = gpu_info(SplitBatched)
    assert info.gpus == [("A10", 1)]
    assert info.cpu == 2.0
    assert info.memory_mib == 4096
    assert info.timeout == 120
    assert info.startup_timeout == 600
    assert info.max_retries == 3
    assert info.batching_info.max_batch_size == 8
    assert info.batching_info.wait_ms == 7
    assert info.concurrency_info is None  # one batch at a time: the model is never re-entered
    assert info.method_names == ["mfk_predict"]
    assert info.regions == ["us-east", "us-west"]
    assert info.cloud == "aws"
    assert info.secrets == ["modal.Secret.from_name('hf-token')"]
    assert {path: mount.name for path, mount in info.volumes.items()} == {
        "/weights": "my-weights",
        HF_CACHE_PATH: "hf-cache",
    }


def test_retry_policy_maps_to_modal_retries():
    retries = _retries(SplitBatched.service_config().retries)
    assert isinstance(retries, modal.Retries)
    assert retries.max_retries == 3
    assert retries.backoff_coefficient == 1.5
    assert retries.initial_delay == datetime.timedelta(seconds=2)
    assert retries.max_delay == datetime.timedelta(seconds=30)
    assert _retries(2) == 2  # an int goes to Modal as is (fixed 1 s delay)
    assert _retries(0) is None


def test_unbatched_class_uses_method_and_class_level_concurrency_and_gpu_fallbacks():
    info = gpu_info(SplitSingle)
    assert info.gpus == [("H100", 1), ("A100-80GB", 2), ("L40S", 1)]
    assert info.batching_info is None
    assert info.concurrency_info.max_inputs == 16
    assert info.concurrency_info.target_inputs == 8
    assert info.max_retries == 2
    assert info.method_names == ["mfk_predict"]
    assert _PartialFunctionFlags.CALLABLE_INTERFACE & partials(SplitSingle)["mfk_predict"].flags


def test_gpu_count_is_parsed():
    assert gpu_info(Snapshotted).gpus == [("H100", 2)]


def test_memory_snapshot_loads_before_the_snapshot_and_moves_to_gpu_after():
    found = partials(Snapshotted)
    assert found["mfk_enter_snapshot"].flags & _PartialFunctionFlags.ENTER_PRE_SNAPSHOT
    assert found["mfk_enter"].flags & _PartialFunctionFlags.ENTER_POST_SNAPSHOT
    # Modal itself refuses snap=True without enable_memory_snapshot=True on the class:
    raw = synchronizer._translate_in(deployment(Snapshotted).gpu_cls)
    assert raw._get_class_service_function()._function_info is not None
    with ModalContainer(Snapshotted) as container:
        assert container.instance.hooks == ["load", "to_device", "warmup"]
        assert container.call("mfk_predict", {"x": 2}) == {"ok": {"y": 6}}


def test_without_snapshot_one_enter_runs_load_to_device_warmup():
    found = partials(PlainHooks)
    assert "mfk_enter_snapshot" not in found
    with ModalContainer(PlainHooks) as container:
        assert container.call("mfk_predict", {"x": 2}) == {"ok": {"y": 3}}
        assert container.instance.hooks == ["load", "to_device", "warmup"]


def test_every_generated_method_is_async_and_exit_is_marked():
    for server_cls in (SplitBatched, SplitSingle, Colocated, Snapshotted, AsyncBatched):
        found = partials(server_cls)
        assert found["mfk_exit"].flags & _PartialFunctionFlags.EXIT
        assert found["mfk_enter"].flags & _PartialFunctionFlags.ENTER_POST_SNAPSHOT
        for name, partial in found.items():
            if name != "mfk_web":  # an asgi_app is a sync factory that Modal calls once
                assert inspect.iscoroutinefunction(partial.raw_f), name


def test_batched_call_takes_plain_dicts_and_answers_an_envelope_per_item():
    with ModalContainer(SplitBatched) as container:
        assert container.call("mfk_predict", [{"x": 1}, {"x": 5}]) == [
            {"ok": {"y": 2}},
            {"ok": {"y": 10}},
        ]


def test_a_failing_item_fails_alone_on_the_gpu_tier():
    with ModalContainer(SplitBatched) as container:
        answers = container.call("mfk_predict", [{"x": 1}, {"x": -1}, {"x": 3}])
    assert answers[0] == {"ok": {"y": 2}} and answers[2] == {"ok": {"y": 6}}
    assert answers[1] == {
        "error": {
            "code": "predict_failed",
            "status": 500,
            "detail": "SplitBatched.predict_batch raised ValueError: negative input",
        }
    }


def test_async_load_state_lives_on_the_loop_predict_batch_and_unload_run_on():
    AsyncBatched.unloads = 0
    assert partials(AsyncBatched)["mfk_predict"].flags & _PartialFunctionFlags.BATCHED
    with ModalContainer(AsyncBatched) as container:
        assert container.call("mfk_predict", [{"x": 1}, {"x": 2}]) == [
            {"ok": {"y": 101}},
            {"ok": {"y": 102}},
        ]
        assert not container.instance.worker.done()
        assert AsyncBatched.unloads == 0
    assert AsyncBatched.unloads == 1  # @modal.exit ran unload() once, on the same loop
    assert container.instance.worker.cancelled()


def wait_ready(client: TestClient) -> None:
    for _ in range(500):
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.01)
    raise AssertionError("/readyz never answered 200")


def test_markers_leave_the_local_router_working():
    deployment(SplitBatched)
    with TestClient(SplitBatched.asgi_app()) as client:
        wait_ready(client)
        assert client.post("/double", json={"x": 4}).json() == {"y": 8}


# -- the web endpoint --------------------------------------------------------------------------


def test_split_web_function_is_a_cpu_asgi_app_bound_in_the_module():
    built = deployment(SplitSingle)
    assert built.web_function is not None
    assert globals()["SplitSingle_web"] is built.web_function
    info = built.web_function.info()
    assert info.gpus == []
    assert info.max_retries is None  # Modal rejects retries on web functions
    assert info.concurrency_info.max_inputs == 100
    assert info.web_info is not None
    assert info.web_info.unauthenticated is False  # requires_proxy_auth=True
    webhook = synchronizer._translate_in(built.web_function)._webhook_config
    assert webhook.requested_suffix == "single-api"
    assert list(webhook.custom_domains) == []
    assert built.url_shape == "https://<workspace>--single-api.modal.run"


def test_split_web_defaults_label_to_the_name_and_is_public():
    built = deployment(SplitBatched)
    info = built.web_function.info()
    assert info.web_info.unauthenticated is True
    assert info.concurrency_info.max_inputs == 256
    assert synchronizer._translate_in(built.web_function)._webhook_config.requested_suffix == (
        "split-batched"
    )


def test_colocated_class_serves_the_router_itself():
    built = deployment(Colocated)
    assert built.web_function is None
    assert "Colocated_web" not in globals()
    info = gpu_info(Colocated, "mfk_web")
    assert info.method_names == ["mfk_web"]
    assert info.batching_info is None  # Modal forbids @batched beside a web method
    assert info.concurrency_info.max_inputs == 32
    assert info.method_details["mfk_web"].unauthenticated is False
    webhook = partials(Colocated)["mfk_web"].params.webhook_config
    assert webhook.requested_suffix == "colocated"
    assert [d.name for d in webhook.custom_domains] == ["api.example.com", "*.models.example.com"]
    assert webhook.requires_proxy_auth is True


def test_colocated_web_method_batches_with_the_model_loaded_once():
    Colocated.loads = 0

    async def requests(app) -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://c") as client:
            answers = await asyncio.gather(
                *(client.post("/double", json={"x": x}) for x in range(8))
            )
            return [*answers, await client.get("/readyz"), await client.get("/healthz")]

    with ModalContainer(Colocated) as container:
        assert Colocated.loads == 1  # @modal.enter loaded the model
        with container.web_app() as app:
            *answers, ready, alive = container.run(requests(app))
        assert [a.json() for a in answers] == [{"y": 3 * x} for x in range(8)]
        assert ready.status_code == alive.status_code == 200
    assert Colocated.loads == 1


def test_colocated_refuses_retries():
    @gpu_service(name="colocated-retries", topology="colocated", retries=2)
    class ColocatedRetries(ModelServer[NumIn, NumOut]):
        def predict(self, item: NumIn) -> NumOut:
            return NumOut(y=item.x)

    ColocatedRetries.__qualname__ = "ColocatedRetries"
    with pytest.raises(ConfigError, match=r"retries=2 with topology='colocated'.*set retries=0"):
        deployment(ColocatedRetries)


# -- image, names, and what Modal cannot import ------------------------------------------------


def test_image_pins_the_runtime_and_lets_the_user_override_a_pin():
    python, packages = image_spec(SplitBatched.service_config())
    assert python == "3.12"
    pydantic = importlib.metadata.version("pydantic")
    prometheus = importlib.metadata.version("prometheus-client")
    packaging = importlib.metadata.version("packaging")
    multipart = importlib.metadata.version("python-multipart")
    webhooks = importlib.metadata.version("standardwebhooks")
    httpx = importlib.metadata.version("httpx")
    assert packages == (
        f"pydantic=={pydantic}",
        f"prometheus-client=={prometheus}",
        f"packaging=={packaging}",
        f"python-multipart=={multipart}",
        f"standardwebhooks=={webhooks}",
        f"httpx=={httpx}",
        "numpy==2.0.0",
        "FastAPI==0.115.0",
    )
    python, packages = image_spec(SplitSingle.service_config())
    assert python == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert packages[0] == f"fastapi=={importlib.metadata.version('fastapi')}"


def test_a_listed_package_replaces_a_pin_only_where_its_marker_holds_in_the_image():
    options = {"name": "pins", "python_version": "3.12"}
    config = ServiceConfig.from_options(
        {**options, "packages": ['fastapi>=0.100; python_version < "3.11"', "Pydantic_Core"]}
    )
    _, packages = image_spec(config)
    assert packages[0] == f"fastapi=={importlib.metadata.version('fastapi')}"  # pin kept
    config = ServiceConfig.from_options(
        {**options, "packages": ['fastapi>=0.100; python_version >= "3.11"', "Pydantic>=2"]}
    )
    _, packages = image_spec(config)
    assert not any(p.startswith(("fastapi==", "pydantic==")) for p in packages), packages


def test_modal_s_builder_files_give_the_runtime_every_container_holds(monkeypatch):
    """Modal's private ``builder/*.txt`` and ``base-images.json``, read from the installed SDK:
    what Modal's own client needs in a container is there, evaluated for the image's Python."""
    monkeypatch.delenv("MODAL_IMAGE_BUILDER_VERSION", raising=False)
    monkeypatch.setenv("MODAL_CONFIG_PATH", "/nonexistent/modal.toml")
    newest = builder_version()
    assert re.fullmatch(r"\d{4}\.\d{2}", newest), newest
    assert builder_requirements_path(newest, "3.12").is_file()
    runtime = modal_runtime("3.12")
    # Modal's client speaks gRPC over HTTP/2 with protobuf messages; pip is a package tool.
    assert {"grpclib", "protobuf", "h2", "aiohttp", "cbor2", "typing-extensions"} <= runtime
    assert "pip" in runtime
    assert "modal" not in runtime and "fastapi" not in runtime  # those come from elsewhere
    # An older builder pins by Python version: async-timeout only below 3.11, and the image's
    # micro version comes from base-images.json.
    monkeypatch.setenv("MODAL_IMAGE_BUILDER_VERSION", "2025.06")
    assert builder_version() == "2025.06"
    assert "async-timeout" in modal_runtime("3.10")
    assert "async-timeout" not in modal_runtime("3.12")
    assert {"grpclib", "protobuf"} <= modal_runtime("3.12")
    assert re.fullmatch(r"3\.12\.\d+", image_environment("3.12").python_full_version)
    # 2023.12 keeps a separate file for Python 3.12.
    assert builder_requirements_path("2023.12", "3.12").name == "2023.12.312.txt"
    assert builder_requirements_path("2023.12", "3.12").is_file()


def test_the_image_installs_every_module_the_library_imports_in_a_container():
    """What ``import modal_fastapi_kit`` and the container code pull in, beyond the standard
    library and Modal's own runtime, is installed by RUNTIME_DISTRIBUTIONS or their
    dependencies; else every container would fail at import."""
    code = (
        "import sys, modal; before = set(sys.modules); "
        "import modal_fastapi_kit, modal_fastapi_kit._modal.container; "
        # what parsing an upload imports (Starlette reads multipart with python-multipart)
        "import starlette.formparsers; assert starlette.formparsers.multipart; "
        # what a file URL's download and a job's webhook import when they run
        "import modal_fastapi_kit._fetch, modal_fastapi_kit._jobs.webhooks, httpx; "
        "print(sorted({m.split('.')[0] for m in set(sys.modules) - before}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    imported = set(ast.literal_eval(out.stdout.strip())) - set(sys.stdlib_module_names)
    # sniffio: anyio imports it when it is installed, and does without it otherwise.
    imported -= {"modal_fastapi_kit", "_distutils_hack", "sniffio"}
    providers = importlib.metadata.packages_distributions()
    installed = _closure([*RUNTIME_DISTRIBUTIONS, "modal"])
    missing = {
        name
        for name in imported
        if not {_normal(d) for d in providers.get(name, [name])} & installed
    }
    assert not missing, f"imported in a container but not in its image: {sorted(missing)}"


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(names: list[str]) -> set[str]:
    """``names`` and everything they require (extras left out), as normalised names."""
    seen: set[str] = set()
    todo = [_normal(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            requirements = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # a requirement for other Pythons or platforms
        seen.add(name)
        for requirement in requirements:
            if "extra ==" not in requirement:
                todo.append(_normal(re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0]))
    return seen


def test_app_is_named_from_the_config_and_built_once():
    assert SplitBatched.modal_app() is SplitBatched.modal_app()
    assert SplitBatched.modal_app().name == "split-batched"


def test_class_defined_in_a_function_is_refused():
    @gpu_service(name="local-class")
    class Local(ModelServer[NumIn, NumOut]):
        def predict(self, item: NumIn) -> NumOut:
            return NumOut(y=item.x)

    with pytest.raises(ConfigError, match="define the class at module level"):
        Local.modal_app()


def test_a_user_attribute_with_a_generated_name_is_refused():
    @gpu_service(name="clash")
    class Clash(ModelServer[NumIn, NumOut]):
        def predict(self, item: NumIn) -> NumOut:
            return NumOut(y=item.x)

        def mfk_predict(self) -> None: ...

    Clash.__qualname__ = "Clash"
    with pytest.raises(ConfigError, match=r"defines 'mfk_predict'.*rename"):
        deployment(Clash)


def test_importing_the_package_imports_neither_modal_nor_torch():
    code = textwrap.dedent(
        """
        import sys
        import modal_fastapi_kit
        from modal_fastapi_kit import ModelServer, gpu_service
        print(sorted(m for m in ("modal", "torch", "transformers") if m in sys.modules))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"


@gpu_service(name="hf-clash", volumes={HF_CACHE_PATH: "weights"}, hf_cache_volume="hf-cache")
class HfClash(ModelServer[NumIn, NumOut]):
    def predict(self, item: NumIn) -> NumOut:
        return NumOut(y=item.x)


def test_a_rejected_deployment_leaves_the_class_unmarked():
    with pytest.raises(ConfigError, match=r"volumes mounts 'weights' at /root/.cache/huggingface"):
        deployment(HfClash)
    assert not [name for name in vars(HfClash) if name.startswith("mfk_")]
    assert "HfClash_web" not in globals()


@gpu_service(name="web-name-taken")
class WebNameTaken(ModelServer[NumIn, NumOut]):
    def predict(self, item: NumIn) -> NumOut:
        return NumOut(y=item.x)


WebNameTaken_web = "the user's own object"


def test_the_web_function_name_must_be_free_in_the_module():
    with pytest.raises(ConfigError, match=r"already defines 'WebNameTaken_web'.*rename yours"):
        deployment(WebNameTaken)
    assert globals()["WebNameTaken_web"] == "the user's own object"


def test_image_steps_run_in_order_with_local_sources_last(monkeypatch):
    calls: list[tuple[str, object]] = []
    for step in ("apt_install", "pip_install", "env", "add_local_python_source"):
        real = getattr(modal.Image, step)

        def spy(self, *args, _real=real, _step=step, **kwargs):
            calls.append((_step, args))
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(modal.Image, step, spy)
    config = SplitBatched.service_config()
    python, packages = image_spec(config)
    build_image(config, python, packages)
    assert [name for name, _ in calls] == [
        "apt_install",
        "pip_install",
        "env",
        "add_local_python_source",
    ]
    assert calls[0][1] == ("git",)
    assert calls[1][1] == packages
    assert calls[2][1] == ({"MODE": "prod", "HF_HOME": HF_CACHE_PATH},)
    assert calls[3][1] == ("modal_fastapi_kit",)


# -- streaming classes -------------------------------------------------------------------------


class Word(BaseModel):
    word: str


@gpu_service(name="split-stream", route="/words", gpu="L4", max_batch_size=4, wait_ms=1)
class SplitStream(ModelServer[NumIn, Word]):
    """A batched generator: per step one word (or END) per item."""

    def predict_batch(self, items: list[NumIn]) -> Iterator[list[object]]:
        for step in range(max(i.x for i in items) + 1):
            yield [Word(word=f"w{step}") if step < i.x else END for i in items]


@gpu_service(name="colocated-stream", route="/words", gpu="L4", topology="colocated")
class ColocatedStream(ModelServer[NumIn, Word]):
    async def predict(self, item: NumIn) -> AsyncIterator[Word]:
        for step in range(item.x):
            yield Word(word=f"a{step}")


def test_a_streaming_split_class_gets_a_generator_method_with_concurrency_not_batched():
    info = gpu_info(SplitStream, "mfk_stream")
    assert info.method_names == ["mfk_stream"]
    assert info.batching_info is None  # Modal cannot batch a generator
    assert info.concurrency_info.max_inputs == 64  # the container's own batcher fills batches
    stream = partials(SplitStream)["mfk_stream"]
    assert stream.params.is_generator
    assert inspect.isasyncgenfunction(stream.raw_f)


def test_a_streaming_split_class_streams_envelopes_from_its_container():
    with ModalContainer(SplitStream) as container:
        envelopes = list(container.stream("mfk_stream", {"x": 3}))
        assert envelopes == [{"chunk": {"word": f"w{i}"}} for i in range(3)]
        # The web tier's router on the Modal backend turns them into SSE.
        app = SplitStream.asgi_app(backend="modal", handle=container.handle())
        with container.serving(app):
            response = container.run(_post(app, "/words", {"x": 2}))
    assert response.status_code == 200
    assert response.text == 'data: {"word":"w0"}\n\ndata: {"word":"w1"}\n\n'


def test_a_streaming_colocated_class_streams_from_its_web_method():
    info = gpu_info(ColocatedStream, "mfk_web")
    assert info.method_names == ["mfk_web"]
    with ModalContainer(ColocatedStream) as container, container.web_app() as app:
        response = container.run(_post(app, "/words", {"x": 2}))
    assert response.text == 'data: {"word":"a0"}\n\ndata: {"word":"a1"}\n\n'


async def _post(app: object, path: str, body: dict[str, int]) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://c") as client:
        return await client.post(path, json=body)


def test_the_gpu_class_retries_crashed_inputs_by_default_and_not_when_told():
    assert gpu_info(PlainHooks).max_retries == 2  # retries="auto", split: DEFAULT_RETRY_POLICY
    assert gpu_info(Colocated, "mfk_web").max_retries is None  # colocated: web requests only
    assert gpu_info(SplitSingle).max_retries == 2  # retries=2, as given
    assert gpu_info(NoRetries).max_retries is None


@gpu_service(name="no-retries", route="/double", retries=0)
class NoRetries(ModelServer[NumIn, NumOut]):
    def predict(self, item: NumIn) -> NumOut:
        return NumOut(y=item.x)
