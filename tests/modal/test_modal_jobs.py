"""Jobs on Modal, offline: the jobs class and the webhook function as Modal's own code reads and
imports them, the job routes of the web tier over ``ModalJobs``, and ``mfk_job`` in a
container built with Modal's container code, loading and running the real model runtime.

What stands in for Modal's servers is ``FakeCloud``: ``spawn`` runs the container's
``mfk_job`` (Modal's finalized function) as a task with the call's id set as Modal sets it,
``FunctionCall`` answers ``get`` / ``cancel`` from that task and raises the SDK's own
exception types, and ``FakeDict`` keeps what a ``modal.Dict`` would. Their signatures are
checked against the installed SDK, so a change there fails here.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import modal
import pytest
import standardwebhooks
from fastapi.testclient import TestClient
from modal import exception as modal_errors
from modal._functions import _Function, _FunctionCall
from modal._runtime.execution_context import _set_current_context_ids
from modal._utils.async_utils import synchronizer
from modal.cls import _Cls
from modal.dict import _Dict
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modal_fastapi_kit import InputError, JobOptions, ModelServer, RetryPolicy, gpu_service
from modal_fastapi_kit._jobs.modal import JobRecords, ModalJobs
from modal_fastapi_kit._jobs.webhooks import WebhookSigner
from modal_fastapi_kit._modal import credentials_configured, jobs_container
from modal_fastapi_kit._modal.build import deployment
from modal_fastapi_kit._modal.jobs import JOB_TIMEOUT_MARGIN, webhook_timeout
from modal_fastapi_kit.exceptions import ConfigError, JobCanceled

from .._servers import ThreadedServer, no_modal_credentials
from ..modal_container import ModalContainer

KEY_A = "a" * 40
KEY_B = "b" * 40
KEYS_ENV = "MODAL_JOBS_TEST_KEYS"
SECRET = "whsec_" + "MfKsZWNyZXQtZm9yLXRoZS1tb2RhbC1qb2JzLXRlc3Rz"
HOOK_URL = "http://127.0.0.1:9/hook"  # never called here: the webhook function is a fake
BOUND = 20.0  # seconds any wait in these tests may take before it fails


class WorkIn(BaseModel):
    n: int
    steps: int = 1
    hold: bool = False  # after the first step, wait for RELEASE
    pause: float = 0.0  # seconds between steps
    fail: bool = False  # refuse the item (InputError)
    crash: bool = False  # the model raises for the item, with words that must stay in the log


class WorkOut(BaseModel):
    total: int


RELEASE = threading.Event()
STOPPED: list[int] = []  # items whose predict stopped at progress(): JobCanceled
STOPPED_EVENT = threading.Event()


@gpu_service(
    name="modal-jobs",
    route="/work",
    gpu="A10",
    max_batch_size=8,
    wait_ms=5,
    memory=8192,
    retries=RetryPolicy(max_retries=4, backoff_coefficient=2.0, initial_delay=1.0, max_delay=10.0),
    max_containers=3,
    min_containers=1,
    secrets=["hf-token"],
    region="us-east",
    auth="api-key",
    api_keys_env=KEYS_ENV,
    api_keys_secret="api-keys",
    jobs=JobOptions(
        run_timeout=7200,
        retention=3600,
        webhook_secret="hooks-secret",
        allow_private_webhooks=True,
    ),
)
class Worker(ModelServer[WorkIn, WorkOut]):
    """A batched service (its GPU class is @modal.batched) whose items report progress."""

    def load(self) -> None:
        self.factor = 10

    def predict_batch(self, items: list[WorkIn]) -> list[WorkOut | Exception]:
        answers: list[WorkOut | Exception] = []
        for item in items:
            if item.fail:
                answers.append(InputError(f"n={item.n} is refused on purpose"))
                continue
            if item.crash:
                answers.append(RuntimeError("the db password is hunter2"))
                continue
            for step in range(item.steps):
                try:
                    self.progress((step + 1) / item.steps, f"step {step + 1} of {item.steps}")
                except JobCanceled:
                    STOPPED.append(item.n)
                    STOPPED_EVENT.set()
                    raise
                if item.hold and step == 0:
                    RELEASE.wait(BOUND)
                time.sleep(item.pause)
            answers.append(WorkOut(total=self.factor * item.n))
        return answers


@gpu_service(name="modal-jobs-clash", route="/work", jobs=True)
class Clash(ModelServer[WorkIn, WorkOut]):
    def predict(self, item: WorkIn) -> WorkOut:
        return WorkOut(total=item.n)


Clash_webhooks = "the user's own object"


@gpu_service(name="modal-no-jobs", route="/work")
class NoJobs(ModelServer[WorkIn, WorkOut]):
    def predict(self, item: WorkIn) -> WorkOut:
        return WorkOut(total=item.n)


# -- the build -------------------------------------------------------------------------------


def test_the_jobs_class_is_a_gpu_class_of_its_own_with_one_plain_method():
    built = deployment(Worker)
    info = built.jobs_cls().mfk_job.info()
    assert info.method_names == ["mfk_job"]
    assert info.batching_info is None  # one job per call, whatever the GPU class batches
    assert info.concurrency_info is None  # one job at a time per container
    assert info.gpus == [("A10", 1)]
    assert info.memory_mib == 8192
    assert info.regions == ["us-east"]
    assert info.timeout == 7200 + JOB_TIMEOUT_MARGIN  # run_timeout, and time to record the end
    assert info.max_retries == 4  # a container lost mid-job runs the job again
    assert info.secrets == ["modal.Secret.from_name('hf-token')"]  # no API keys, no webhook key
    # The GPU class keeps its one batched method: the jobs class took nothing from it.
    gpu = built.gpu_cls().mfk_predict.info()
    assert gpu.method_names == ["mfk_predict"]
    assert gpu.batching_info.max_batch_size == 8
    # Both are bound where Modal looks them up, by name.
    assert globals()["Worker_jobs"] is built.jobs_cls
    assert globals()["Worker_webhooks"] is built.webhook_function


def test_the_jobs_class_carries_the_lifecycle_and_the_job_method_only():
    built = deployment(Worker)
    raw = synchronizer._translate_in(built.jobs_cls)
    user_cls = raw._get_user_cls()
    assert user_cls.__name__ == user_cls.__qualname__ == "Worker_jobs"
    assert user_cls.__module__ == __name__
    assert not issubclass(user_cls, Worker)  # Modal would collect Worker's batched method
    partials = _Cls._from_local(
        user_cls, raw._get_app(), raw._get_class_service_function()
    )._get_partial_functions()
    assert sorted(partials) == ["mfk_enter", "mfk_exit", "mfk_job"]
    assert not partials["mfk_job"].params.batch_max_size
    assert all(inspect.iscoroutinefunction(pf.raw_f) for pf in partials.values())


def test_the_webhook_function_is_a_cpu_function_with_the_webhook_secret():
    built = deployment(Worker)
    info = built.webhook_function.info()
    assert info.gpus == []
    assert info.timeout == webhook_timeout(Worker.service_config().jobs)
    assert info.concurrency_info.max_inputs == 100  # deliveries mostly wait
    assert info.max_retries is None  # deliver() retries itself
    assert "modal.Secret.from_name('hooks-secret')" in info.secrets
    # The web tier gets the webhook secret too: it refuses a Webhook-URL it could not sign.
    web = built.web_function.info()
    assert "modal.Secret.from_name('hooks-secret')" in web.secrets
    assert "modal.Secret.from_name('api-keys')" in web.secrets


def test_webhook_timeout_covers_every_attempt_and_wait():
    options = JobOptions(webhook_attempts=4, webhook_backoff=5.0)
    # waits 5 + 10 + 20, four attempts of 10 s, a margin
    assert webhook_timeout(options) == 35 + 40 + JOB_TIMEOUT_MARGIN
    longest = JobOptions(webhook_attempts=20, webhook_backoff=3600)  # each wait at most an hour
    assert webhook_timeout(longest) == 19 * 3600 + 20 * 10 + JOB_TIMEOUT_MARGIN


def test_every_image_pins_the_webhook_signer_and_sender():
    # every router imports the signer; httpx also downloads file URLs, with or without jobs
    for packages in (deployment(Worker).packages, deployment(NoJobs).packages):
        assert any(p.startswith("standardwebhooks==") for p in packages)
        assert any(p.startswith("httpx==") for p in packages)


def test_a_name_the_module_already_binds_is_refused():
    with pytest.raises(ConfigError, match=r"already defines 'Clash_webhooks'.*rename yours"):
        deployment(Clash)
    assert globals()["Clash_webhooks"] == "the user's own object"
    assert "Clash_jobs" not in globals()
    assert not [name for name in vars(Clash) if name.startswith("mfk_")]


SERVICE_FILE = """
from pydantic import BaseModel
from modal_fastapi_kit import JobOptions, ModelServer, gpu_service

class In(BaseModel):
    x: int

class Out(BaseModel):
    y: int

@gpu_service(name="jobs-import", route="/double", gpu="L4", max_batch_size=4,
             jobs=JobOptions(run_timeout=600))
class Doubler(ModelServer[In, Out]):
    def predict_batch(self, items):
        self.progress(1.0, "done")
        return [Out(y=2 * item.x) for item in items]

app = Doubler.modal_app()
"""

CONTAINER_IMPORT = r"""
import asyncio, json, sys
sys.path.insert(0, ".")
from modal._partial_function import _PartialFunctionFlags as F, _find_callables_for_obj
from modal._runtime import user_code_imports
from modal._utils.async_utils import synchronizer
from modal.cls import _Cls
from modal_proto import api_pb2

FILE = api_pb2.Function.DEFINITION_TYPE_FILE
jobs_def = api_pb2.Function(module_name="doubler", implementation_name="Doubler_jobs.*",
                            app_name="jobs-import", definition_type=FILE)
found = synchronizer._translate_in(user_code_imports._get_cls_or_user_cls(jobs_def, None))
app = user_code_imports.get_active_app_fallback(jobs_def)
local = _Cls._from_local(found._get_user_cls(), app, found._get_class_service_function())
partials = local._get_partial_functions()
instance = user_code_imports.get_user_class_instance(local, (), {})

hook_def = api_pb2.Function(module_name="doubler", implementation_name="Doubler_webhooks",
                            app_name="jobs-import", definition_type=FILE)
hooks = user_code_imports.import_single_function_service(hook_def, None)

print(json.dumps({
    "cls": found._get_user_cls().__qualname__,
    "app_is_the_modules": app is synchronizer._translate_in(sys.modules["doubler"].app),
    "partials": {name: {"enter": bool(pf.flags & F.ENTER_POST_SNAPSHOT),
                        "exit": bool(pf.flags & F.EXIT),
                        "method": bool(pf.flags & F.CALLABLE_INTERFACE),
                        "batched": bool(pf.flags & F.BATCHED)}
                 for name, pf in partials.items()},
    "instance": type(instance).__qualname__,
    "enter": sorted(_find_callables_for_obj(instance, F.ENTER_POST_SNAPSHOT)),
    "exit": sorted(_find_callables_for_obj(instance, F.EXIT)),
    "hooks": hooks._user_defined_callable.__name__,
    "hooks_app_is_the_modules": hooks.app is app,
}))
"""


def test_modal_s_container_import_finds_the_jobs_class_and_the_webhook_function(tmp_path):
    (tmp_path / "doubler.py").write_text(SERVICE_FILE)
    done = subprocess.run(
        [sys.executable, "-c", CONTAINER_IMPORT],
        cwd=tmp_path,
        env=no_modal_credentials(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["cls"] == "Doubler_jobs"
    assert seen["app_is_the_modules"] is True
    assert seen["partials"] == {
        "mfk_enter": {"enter": True, "exit": False, "method": False, "batched": False},
        "mfk_exit": {"enter": False, "exit": True, "method": False, "batched": False},
        "mfk_job": {"enter": False, "exit": False, "method": True, "batched": False},
    }
    assert seen["instance"] == "Doubler_jobs"
    assert seen["enter"] == ["mfk_enter"]
    assert seen["exit"] == ["mfk_exit"]
    assert seen["hooks"] == "Doubler_webhooks"
    assert seen["hooks_app_is_the_modules"] is True


# -- fakes for Modal's servers, with the SDK's signatures ------------------------------------


class aio:
    """An async method reached as ``obj.name.aio(...)``, as synchronicity exposes it."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __get__(self, obj: Any, owner: type) -> Any:
        if obj is None:
            return self.fn
        return SimpleNamespace(aio=self.fn.__get__(obj, owner))


_NO_DEFAULT = object()


class FakeDict:
    """A ``modal.Dict``: values are copied in and out (Modal serializes them)."""

    def __init__(self) -> None:
        self.data: dict[Any, Any] = {}
        self.writes: list[tuple[Any, Any]] = []

    @aio
    async def get(self, key: Any, default: Any | None = None) -> Any:
        await asyncio.sleep(0)  # a network call: others run meanwhile
        return copy.deepcopy(self.data.get(key, default))

    @aio
    async def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool:
        await asyncio.sleep(0)
        if skip_if_exists and key in self.data:
            return False
        self.data[key] = copy.deepcopy(value)
        self.writes.append((key, copy.deepcopy(value)))
        return True

    @aio
    async def pop(self, key: Any, default: Any = _NO_DEFAULT) -> Any:
        await asyncio.sleep(0)
        if key not in self.data:
            if default is _NO_DEFAULT:
                raise KeyError(key)
            return default
        return self.data.pop(key)


class FakeCall:
    """A ``FunctionCall`` of a spawned job: its task is the input in the jobs container."""

    def __init__(self, object_id: str, task: asyncio.Task[Any]) -> None:
        self.object_id = object_id
        self.task = task
        self.expired = False
        self.cancels = 0

    @aio
    async def get(self, timeout: float | None = None, *, index: int = 0) -> Any:
        if self.expired:
            raise modal_errors.OutputExpiredError()
        await asyncio.wait({self.task}, timeout=timeout)
        if not self.task.done():
            raise TimeoutError()  # the builtin one, as FunctionCall.get raises it
        if self.task.cancelled():  # Modal's TERMINATED output, which has no data
            raise modal_errors.RemoteError("")
        return self.task.result()

    @aio
    async def cancel(self, terminate_containers: bool = False) -> None:
        self.cancels += 1
        self.task.cancel()  # Modal cancels the input's task in its container


class FakeFunction:
    """A Modal function or method; ``spawn`` answers what ``on_spawn`` makes."""

    def __init__(self, on_spawn: Callable[..., Any]) -> None:
        self.on_spawn = on_spawn

    @aio
    async def spawn(self, *args: Any, **kwargs: Any) -> Any:
        return self.on_spawn(*args, **kwargs)


def _shape(fn: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
    """A signature without annotations: names, kinds, and simple defaults."""
    shape = []
    for p in inspect.signature(fn).parameters.values():
        default = p.default if p.default in (None, False, 0, inspect.Parameter.empty) else "obj"
        shape.append((p.name, p.kind, default))
    return shape


def test_the_fakes_take_what_the_installed_sdk_takes():
    assert _shape(FakeCall.get) == _shape(_FunctionCall.get)
    assert _shape(FakeCall.cancel) == _shape(_FunctionCall.cancel)
    assert _shape(FakeFunction.spawn) == _shape(_Function.spawn)
    assert _shape(FakeDict.get) == _shape(_Dict.get)
    assert _shape(FakeDict.put) == _shape(_Dict.put)
    assert _shape(FakeDict.pop) == _shape(_Dict.pop)
    assert _shape(FakeCloud.call_from_id)[1:] == _shape(_FunctionCall.from_id)[1:]
    assert _shape(FakeCloud.dict_from_name)[1:] == _shape(_Dict.from_name)
    # The exceptions the fakes raise are the SDK's, in the order ModalJobs must catch them.
    assert issubclass(modal_errors.OutputExpiredError, modal_errors.TimeoutError)
    assert not issubclass(modal_errors.TimeoutError, TimeoutError)  # pending is the builtin
    assert issubclass(modal_errors.FunctionTimeoutError, modal_errors.TimeoutError)
    assert inspect.getsource(_FunctionCall.get).count("poll_function") == 1
    assert callable(modal.current_function_call_id)


class JobsContainer(ModalContainer):
    """``ModalContainer`` for the jobs class of ``server_cls``."""

    def __init__(self, server_cls: type) -> None:
        super().__init__(server_cls, jobs=True)

    async def job(self, call_id: str, *args: Any) -> Any:
        """``mfk_job`` as Modal calls it for spawned call ``call_id``."""
        _set_current_context_ids([f"in-{call_id}"], [call_id], [f"at-{call_id}"])
        return await self._finalized("mfk_job").callable(*args)


class FakeCloud:
    """Modal's servers for one app: spawned jobs run in ``container`` once ``open`` is set."""

    def __init__(self, container: JobsContainer) -> None:
        self.container = container
        self.store = FakeDict()
        self.calls: dict[str, FakeCall] = {}
        self.spawned: list[tuple[Any, ...]] = []
        self.hooks: list[tuple[Any, ...]] = []
        self.open = asyncio.Event()  # a container is free for the queued jobs
        self.open.set()
        self._ids = itertools.count(1)
        self.webhooks = FakeFunction(self._hook)

    def jobs_cls(self) -> Any:
        return SimpleNamespace(mfk_job=FakeFunction(self._job))

    def _job(self, *args: Any) -> FakeCall:
        self.spawned.append(args)
        call_id = f"fc-{next(self._ids)}"
        task = asyncio.get_running_loop().create_task(self._run(call_id, args))
        self.calls[call_id] = FakeCall(call_id, task)
        return self.calls[call_id]

    async def _run(self, call_id: str, args: tuple[Any, ...]) -> Any:
        await self.open.wait()
        return await self.container.job(call_id, *copy.deepcopy(args))

    def _hook(self, *args: Any) -> None:
        self.hooks.append(args)

    async def spawn_webhook(self, function: Any, *args: Any) -> None:
        """The container's spawn of the app's own webhook function."""
        assert function is deployment(Worker).webhook_function
        await self.webhooks.spawn.aio(*args)

    def call_from_id(self, function_call_id: str, client: Any = None) -> FakeCall:
        return self.calls[function_call_id]

    def dict_from_name(
        self,
        name: str,
        *,
        environment_name: str | None = None,
        create_if_missing: bool = False,
        client: Any = None,
    ) -> FakeDict:
        assert name == "modal-jobs-jobs"
        assert create_if_missing is True
        return self.store


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeCloud]:
    monkeypatch.setenv(KEYS_ENV, f"{KEY_A},{KEY_B}")
    monkeypatch.setenv("MFK_WEBHOOK_SECRET", SECRET)
    monkeypatch.setattr(jobs_container, "PROGRESS_EVERY", 0.01)
    RELEASE.clear()
    STOPPED.clear()
    STOPPED_EVENT.clear()
    with JobsContainer(Worker) as container:
        fake = FakeCloud(container)
        monkeypatch.setattr(modal.Dict, "from_name", fake.dict_from_name)
        monkeypatch.setattr(modal.FunctionCall, "from_id", fake.call_from_id)
        monkeypatch.setattr(jobs_container, "spawn_webhook", fake.spawn_webhook)
        try:
            yield fake
        finally:
            RELEASE.set()  # a held predict ends before the container exits
            for call in fake.calls.values():
                call.task.cancel()
            container.run(asyncio.sleep(0))


def _serve(cloud: FakeCloud, scenario: Callable[[httpx.AsyncClient], Any]) -> Any:
    """Run ``scenario(client)`` against the web tier's app (router on ``ModalBackend``,
    ``job_service()`` as the deployed web function builds it) on the container's loop."""
    app = Worker.asgi_app(
        backend="modal",
        handle=lambda: SimpleNamespace(),
        jobs_handle=cloud.jobs_cls,
        webhook_handle=cloud.webhooks,
    )

    async def run() -> Any:
        transport = httpx.ASGITransport(app=app)
        headers = {"authorization": f"Bearer {KEY_A}"}
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", headers=headers
        ) as client:
            return await asyncio.wait_for(scenario(client), BOUND)

    with cloud.container.serving(app):
        return cloud.container.run(run())


async def _until(client: httpx.AsyncClient, job_id: str, check: Callable[[dict], bool]) -> dict:
    """Poll the job's status until ``check`` holds (bounded by the scenario's wait_for)."""
    while True:
        status = (await client.get(f"/work/jobs/{job_id}")).json()
        if check(status):
            return status
        await asyncio.sleep(0.01)


# -- the job routes over ModalJobs -----------------------------------------------------------


def test_a_job_is_spawned_queued_runs_with_progress_and_succeeds(cloud):
    cloud.open.clear()  # no container free yet: the job waits in Modal's queue

    async def scenario(client: httpx.AsyncClient) -> None:
        submitted = await client.post("/work/jobs", json={"n": 4, "steps": 2, "hold": True})
        assert submitted.status_code == 202, submitted.text
        job = submitted.json()
        job_id = job["id"]
        assert job_id == "fc-1"  # the FunctionCall's id
        assert job["state"] == "queued"
        assert submitted.headers["location"] == f"http://testserver/work/jobs/{job_id}"
        # spawned once, with the request and what the container needs to answer a webhook
        [(wire, meta)] = cloud.spawned
        assert wire == {
            "n": 4,
            "steps": 2,
            "hold": True,
            "pause": 0.0,
            "fail": False,
            "crash": False,
        }
        assert meta["jobs_url"] == "http://testserver/work/jobs"
        assert meta["webhook"] is None
        assert meta["request_id"] == submitted.headers["x-request-id"]
        record = cloud.store.data[f"job:{job_id}"]
        assert record["owner"] and record["owner"] != KEY_A  # a digest of the key, never it
        assert record["request_id"] == meta["request_id"]
        assert record["created_at"] == meta["created_at"]

        assert (await client.get(f"/work/jobs/{job_id}")).json()["state"] == "queued"
        early = await client.get(f"/work/jobs/{job_id}/result", params={"wait": 0.05})
        assert early.status_code == 202
        assert early.json()["state"] == "queued"

        cloud.open.set()  # a container takes it
        running = await _until(client, job_id, lambda s: s["progress"] is not None)
        assert running["state"] == "running"
        assert running["progress"] == {"fraction": 0.5, "message": "step 1 of 2"}
        assert running["attempts"] == 1
        assert running["started_at"] is not None

        RELEASE.set()
        result = await client.get(f"/work/jobs/{job_id}/result", params={"wait": BOUND / 2})
        assert result.status_code == 200, result.text
        assert result.json() == {"total": 40}

        done = (await client.get(f"/work/jobs/{job_id}")).json()
        assert done["state"] == "succeeded"
        assert done["progress"] == {"fraction": 1.0, "message": "step 2 of 2"}
        assert done["links"]["result"] == f"http://testserver/work/jobs/{job_id}/result"
        finished = cloud.store.data[f"end:{job_id}"]
        assert finished["state"] == "succeeded"
        assert done["finished_at"] is not None
        expires = _seconds(done["expires_at"]) - _seconds(done["finished_at"])
        assert round(expires) == 3600  # retention

    _serve(cloud, scenario)


def _seconds(when: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp()


def test_a_failed_job_answers_its_own_error(cloud):
    async def scenario(client: httpx.AsyncClient) -> None:
        job_id = (await client.post("/work/jobs", json={"n": 1, "fail": True})).json()["id"]
        result = await client.get(f"/work/jobs/{job_id}/result", params={"wait": BOUND / 2})
        assert result.status_code == 422
        assert result.json()["code"] == "invalid_input"
        assert "n=1 is refused on purpose" in result.json()["detail"]
        status = (await client.get(f"/work/jobs/{job_id}")).json()
        assert status["state"] == "failed"
        assert status["error"]["code"] == "invalid_input"
        assert status["error"]["status"] == 422
        assert cloud.store.data[f"end:{job_id}"]["state"] == "failed"

    _serve(cloud, scenario)


def test_a_job_whose_model_raised_shows_no_word_of_it(cloud, caplog):
    async def scenario(client: httpx.AsyncClient) -> None:
        job_id = (await client.post("/work/jobs", json={"n": 1, "crash": True})).json()["id"]
        result = await client.get(f"/work/jobs/{job_id}/result", params={"wait": BOUND / 2})
        assert result.status_code == 500 and result.json()["code"] == "predict_failed"
        status = (await client.get(f"/work/jobs/{job_id}")).json()
        assert status["error"]["code"] == "predict_failed"
        for said in (result.text, str(status)):
            assert "hunter2" not in said and "quote the job id" in said
        assert f"job {job_id} failed" in caplog.text and "hunter2" in caplog.text

    _serve(cloud, scenario)


def test_a_job_whose_call_ended_in_a_modal_failure_is_failed_not_unavailable(cloud):
    async def scenario(client: httpx.AsyncClient) -> None:
        job_id = (await client.post("/work/jobs", json={"n": 1})).json()["id"]
        await client.get(f"/work/jobs/{job_id}/result", params={"wait": BOUND / 2})
        call = cloud.calls[job_id]
        failure = modal_errors.FunctionTimeoutError("Function timed out")

        async def timed_out() -> None:
            raise failure

        call.task = asyncio.get_running_loop().create_task(timed_out())
        await asyncio.wait({call.task})
        status = (await client.get(f"/work/jobs/{job_id}")).json()
        assert status["state"] == "failed"
        assert status["error"]["code"] == "deadline"
        assert "run_timeout (7200 s)" in status["error"]["detail"]

    _serve(cloud, scenario)


def test_modal_unreachable_while_asking_is_a_503_not_a_failed_job(cloud):
    async def scenario(client: httpx.AsyncClient) -> None:
        job_id = (await client.post("/work/jobs", json={"n": 1})).json()["id"]

        async def unreachable(*args: Any, **kwargs: Any) -> Any:
            raise modal_errors.ConnectionError("no route to Modal")

        cloud.calls[job_id].get = SimpleNamespace(aio=unreachable)  # type: ignore[misc]
        answer = await client.get(f"/work/jobs/{job_id}")
        assert answer.status_code == 503
        assert answer.json()["request_id"]

    _serve(cloud, scenario)


def test_expired_when_modal_no_longer_keeps_the_output_or_past_retention(cloud):
    async def scenario(client: httpx.AsyncClient) -> None:
        first = (await client.post("/work/jobs", json={"n": 1})).json()["id"]
        second = (await client.post("/work/jobs", json={"n": 2})).json()["id"]
        for job_id in (first, second):
            done = await client.get(f"/work/jobs/{job_id}/result", params={"wait": BOUND / 2})
            assert done.status_code == 200

        cloud.calls[first].expired = True  # OutputExpiredError
        cloud.store.data[f"end:{second}"]["finished_at"] = time.time() - 3601  # past retention
        for job_id in (first, second):
            assert (await client.get(f"/work/jobs/{job_id}")).json()["state"] == "expired"
            gone = await client.get(f"/work/jobs/{job_id}/result")
            assert gone.status_code == 410
            assert gone.json()["code"] == "job_expired"

    _serve(cloud, scenario)


def test_cancel_stops_a_running_sync_predict_at_its_next_progress_and_is_idempotent(cloud):
    async def scenario(client: httpx.AsyncClient) -> None:
        submitted = await client.post(
            "/work/jobs",
            json={"n": 7, "steps": 5000, "pause": 0.002},
            headers={"webhook-url": HOOK_URL},
        )
        job_id = submitted.json()["id"]
        await _until(client, job_id, lambda s: s["progress"] is not None)  # predict is running

        canceled = await client.post(f"/work/jobs/{job_id}/cancel")
        assert canceled.status_code == 200
        assert canceled.json()["state"] == "canceled"
        assert canceled.json()["finished_at"] is not None
        call = cloud.calls[job_id]
        assert call.cancels == 1
        # The predict on the inference thread stops at its next progress() (JobCanceled).
        stopped = await asyncio.to_thread(STOPPED_EVENT.wait, BOUND)
        assert stopped and STOPPED == [7]
        assert call.task.cancelled()
        assert f"end:{job_id}" not in cloud.store.data  # the job did not end on its own

        again = await client.post(f"/work/jobs/{job_id}/cancel")
        assert again.status_code == 200 and again.json()["state"] == "canceled"
        assert call.cancels == 1  # already canceled: nothing asked of Modal twice
        result = await client.get(f"/work/jobs/{job_id}/result")
        assert result.status_code == 409
        assert result.json()["code"] == "job_canceled"
        # One canceled event, sent by the web tier through the webhook function.
        [(hook_job, url, msg_id, body)] = cloud.hooks
        assert (hook_job, url, msg_id) == (job_id, HOOK_URL, f"{job_id}.canceled")
        assert json.loads(body)["data"]["state"] == "canceled"

        # The model is free again: the next job runs in the same container.
        after = (await client.post("/work/jobs", json={"n": 3})).json()["id"]
        done = await client.get(f"/work/jobs/{after}/result", params={"wait": BOUND / 2})
        assert done.json() == {"total": 30}

    _serve(cloud, scenario)


def test_a_queued_job_canceled_never_runs(cloud):
    cloud.open.clear()

    async def scenario(client: httpx.AsyncClient) -> None:
        job_id = (await client.post("/work/jobs", json={"n": 1})).json()["id"]
        canceled = (await client.post(f"/work/jobs/{job_id}/cancel")).json()
        assert canceled["state"] == "canceled"
        cloud.open.set()
        await asyncio.sleep(0.05)
        assert cloud.calls[job_id].task.cancelled()
        assert f"run:{job_id}" not in cloud.store.data
        assert (await client.get(f"/work/jobs/{job_id}")).json()["state"] == "canceled"
        assert cloud.hooks == []  # no Webhook-URL, no event

    _serve(cloud, scenario)


def test_a_job_is_visible_only_to_the_key_that_submitted_it(cloud):
    async def scenario(client: httpx.AsyncClient) -> None:
        job_id = (await client.post("/work/jobs", json={"n": 1})).json()["id"]
        other = {"authorization": f"Bearer {KEY_B}"}
        for answer in (
            await client.get(f"/work/jobs/{job_id}", headers=other),
            await client.get(f"/work/jobs/{job_id}/result", headers=other),
            await client.post(f"/work/jobs/{job_id}/cancel", headers=other),
            await client.get("/work/jobs/fc-404"),
        ):
            assert answer.status_code == 404
            assert answer.json()["code"] == "job_not_found"
        assert cloud.calls[job_id].cancels == 0
        mine = await client.get(f"/work/jobs/{job_id}/result", params={"wait": BOUND / 2})
        assert mine.status_code == 200

    _serve(cloud, scenario)


def test_an_idempotency_key_answers_the_same_job_for_the_same_body(cloud):
    async def scenario(client: httpx.AsyncClient) -> None:
        key = {"idempotency-key": "order-1"}
        first = await client.post("/work/jobs", json={"n": 5}, headers=key)
        again = await client.post("/work/jobs", json={"n": 5}, headers=key)
        assert first.status_code == again.status_code == 202
        assert again.json()["id"] == first.json()["id"]
        assert again.headers["idempotent-replayed"] == "true"
        assert "idempotent-replayed" not in first.headers
        assert len(cloud.spawned) == 1

        other = await client.post("/work/jobs", json={"n": 6}, headers=key)
        assert other.status_code == 422
        assert other.json()["code"] == "idempotency_key_reused"
        assert len(cloud.spawned) == 1

        # Another key holder's same key is another job.
        theirs = await client.post(
            "/work/jobs", json={"n": 5}, headers={**key, "authorization": f"Bearer {KEY_B}"}
        )
        assert theirs.json()["id"] != first.json()["id"]

    _serve(cloud, scenario)


def test_the_same_key_sent_twice_at_once_makes_one_job(cloud):
    cloud.open.clear()

    async def scenario(client: httpx.AsyncClient) -> None:
        key = {"idempotency-key": "order-2"}
        one, two = await asyncio.gather(
            client.post("/work/jobs", json={"n": 5}, headers=key),
            client.post("/work/jobs", json={"n": 5}, headers=key),
        )
        assert one.status_code == two.status_code == 202
        assert one.json()["id"] == two.json()["id"]
        assert sorted(r.headers.get("idempotent-replayed", "") for r in (one, two)) == ["", "true"]
        # Both spawned before either wrote the key; the one that lost cancelled its call.
        assert len(cloud.spawned) == 2
        kept = one.json()["id"]
        [lost] = [call for call in cloud.calls.values() if call.object_id != kept]
        assert lost.cancels == 1
        assert f"job:{lost.object_id}" not in cloud.store.data

    _serve(cloud, scenario)


def test_a_job_whose_record_cannot_be_written_is_cancelled_and_answered_503(cloud):
    cloud.open.clear()

    async def scenario(client: httpx.AsyncClient) -> None:
        put = cloud.store.put.aio

        async def broken(key: Any, value: Any, **kwargs: Any) -> bool:
            if str(key).startswith("job:"):
                raise modal_errors.ConnectionError("the Dict cannot be reached")
            return await put(key, value, **kwargs)

        cloud.store.put = SimpleNamespace(aio=broken)  # type: ignore[method-assign]
        answer = await client.post("/work/jobs", json={"n": 1})
        assert answer.status_code == 503
        [call] = cloud.calls.values()
        assert call.cancels == 1  # nobody could ever find it: it must not run

    _serve(cloud, scenario)


def test_a_webhook_url_without_a_secret_in_the_app_is_refused(cloud, monkeypatch):
    monkeypatch.delenv("MFK_WEBHOOK_SECRET")

    async def scenario(client: httpx.AsyncClient) -> None:
        refused = await client.post("/work/jobs", json={"n": 1}, headers={"webhook-url": HOOK_URL})
        assert refused.status_code == 422
        assert refused.json()["code"] == "webhook_refused"
        assert "MFK_WEBHOOK_SECRET" in refused.json()["detail"]
        assert cloud.spawned == []

    _serve(cloud, scenario)


def test_a_router_elsewhere_looks_the_jobs_up_by_name_and_answers_503_without_credentials(
    monkeypatch, caplog
):
    if credentials_configured():
        pytest.skip("this machine has Modal credentials")
    monkeypatch.setenv(KEYS_ENV, KEY_A)
    router = Worker.router(backend="modal", environment_name="staging")
    jobs = router.jobs
    assert isinstance(jobs, ModalJobs)
    assert repr(jobs._jobs_cls) == (
        "Cls.from_name('modal-jobs', 'Worker_jobs', environment_name='staging')"
    )
    assert repr(jobs._webhooks) == (
        "modal.Function.from_name('modal-jobs', 'Worker_webhooks', environment_name='staging')"
    )
    assert repr(jobs.records.store).startswith("modal.Dict.from_name('modal-jobs-jobs'")
    auth = {"authorization": f"Bearer {KEY_A}"}
    with TestClient(Worker.asgi_app(backend="modal")) as client:
        submitted = client.post("/work/jobs", json={"n": 1}, headers=auth)
        assert submitted.status_code == 503
        assert submitted.json()["detail"] == "the model service is unavailable; retry later"
        assert client.get("/work/jobs/fc-1", headers=auth).status_code == 503
    assert "modal token new" in caplog.text


# -- the container side ----------------------------------------------------------------------


def test_mfk_job_records_its_run_and_end_and_spawns_a_signable_webhook(cloud):
    async def scenario(client: httpx.AsyncClient) -> None:
        submitted = await client.post(
            "/work/jobs", json={"n": 2, "steps": 1}, headers={"webhook-url": HOOK_URL}
        )
        job_id = submitted.json()["id"]
        assert submitted.json()["webhook"] == {
            "url": HOOK_URL,
            "state": "pending",
            "attempts": 0,
            "last_status": None,
            "last_error": None,
        }
        done = await client.get(f"/work/jobs/{job_id}/result", params={"wait": BOUND / 2})
        assert done.json() == {"total": 20}
        writes = [key for key, _ in cloud.store.writes if key.endswith(job_id)]
        assert writes[0] == f"job:{job_id}"
        assert writes[-1] == f"end:{job_id}"
        assert f"run:{job_id}" in writes
        run = cloud.store.data[f"run:{job_id}"]
        assert run["attempts"] == 1
        assert run["progress"] == {"fraction": 1.0, "message": "step 1 of 1"}

        [(hook_job, url, msg_id, body)] = cloud.hooks
        assert (hook_job, url, msg_id) == (job_id, HOOK_URL, f"{job_id}.succeeded")
        headers = WebhookSigner([SECRET]).headers(msg_id, body)
        event = standardwebhooks.Webhook(SECRET).verify(body, headers)
        assert event["type"] == "job.succeeded"
        assert event["data"]["id"] == job_id
        assert event["data"]["state"] == "succeeded"
        assert event["data"]["links"]["result"] == f"http://testserver/work/jobs/{job_id}/result"
        assert event["data"]["request_id"] == submitted.headers["x-request-id"]

        # The webhook function's records show in the job's status.
        cloud.store.data[f"hook:{job_id}"] = {
            "url": HOOK_URL,
            "state": "delivered",
            "attempts": 2,
            "last_status": 204,
            "last_error": None,
        }
        status = (await client.get(f"/work/jobs/{job_id}")).json()
        assert status["webhook"]["state"] == "delivered"
        assert status["webhook"]["attempts"] == 2

    _serve(cloud, scenario)


def test_a_job_run_again_after_a_lost_container_counts_its_attempts(cloud):
    meta = {"created_at": 1.0, "request_id": "r-1", "jobs_url": "http://x/jobs", "webhook": None}
    first = cloud.container.run(cloud.container.job("fc-9", {"n": 1}, meta))
    again = cloud.container.run(cloud.container.job("fc-9", {"n": 1}, meta))
    assert first == again == {"ok": {"total": 10}}
    assert cloud.store.data["run:fc-9"]["attempts"] == 2
    # A request the container cannot read is that job's error, not a crash.
    broken = cloud.container.run(cloud.container.job("fc-10", {"x": "?"}, meta))
    assert broken["error"]["code"] == "predict_failed"
    assert cloud.store.data["end:fc-10"]["state"] == "failed"


def test_mfk_job_outside_a_spawned_call_says_how_jobs_are_submitted(cloud):
    async def direct() -> Any:
        return await cloud.container._finalized("mfk_job").callable({"n": 1}, {})

    with pytest.raises(RuntimeError, match=r"submit jobs with POST <route>/jobs"):
        cloud.container.run(direct())


def test_local_runs_mfk_job_in_process_through_the_real_runtime(monkeypatch):
    store = FakeDict()
    monkeypatch.setattr(modal.Dict, "from_name", lambda name, **kwargs: store)
    meta = {"created_at": 1.0, "request_id": "r", "jobs_url": "http://x/jobs", "webhook": None}

    async def local() -> Any:
        _set_current_context_ids(["in-l"], ["fc-local"], ["at-l"])
        return await deployment(Worker).jobs_cls().mfk_job.local({"n": 3, "steps": 2}, meta)

    assert asyncio.run(local()) == {"ok": {"total": 30}}  # load() ran: factor 10
    assert store.data["end:fc-local"]["state"] == "succeeded"
    assert store.data["run:fc-local"]["progress"]["fraction"] == 1.0


# -- the webhook function --------------------------------------------------------------------


class Receiver:
    """Answers 503 to the first call, then verifies the signature and answers 204."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        self.calls.append((dict(request.headers), body))
        if len(self.calls) == 1:
            return Response(status_code=503)
        standardwebhooks.Webhook(SECRET).verify(body, dict(request.headers))
        return Response(status_code=204)


@pytest.mark.e2e  # a receiver on 127.0.0.1
def test_the_webhook_function_delivers_and_records_every_attempt():
    options = JobOptions(allow_private_webhooks=True, webhook_attempts=3, webhook_backoff=0.01)
    store = FakeDict()
    receiver = Receiver()
    body = b'{"type":"job.succeeded"}'
    with ThreadedServer(receiver) as server:
        last = asyncio.run(
            jobs_container.send(
                "fc-1",
                f"{server.url}/hook",
                "fc-1.succeeded",
                body,
                options=options,
                store=store,
                signer=lambda options: WebhookSigner([SECRET]),
            )
        )
    assert last["state"] == "delivered"
    assert [(v["state"], v["attempts"], v["last_status"]) for _, v in store.writes] == [
        ("pending", 1, 503),
        ("delivered", 2, 204),
    ]
    assert [headers["webhook-id"] for headers, _ in receiver.calls] == ["fc-1.succeeded"] * 2
    assert all(sent == body for _, sent in receiver.calls)


def test_the_webhook_function_without_a_secret_records_why_it_sent_nothing():
    store = FakeDict()
    last = asyncio.run(
        jobs_container.send(
            "fc-1",
            HOOK_URL,
            "fc-1.failed",
            b"{}",
            options=JobOptions(),
            store=store,
            signer=lambda options: None,
        )
    )
    assert last["state"] == "failed"
    assert "MFK_WEBHOOK_SECRET" in last["last_error"]
    assert store.data["hook:fc-1"]["state"] == "failed"


def test_job_records_read_back_what_was_written():
    records = JobRecords(FakeDict())

    async def scenario() -> None:
        await records.started("fc-1", 10.0)
        run = await records.started("fc-1", 20.0)
        assert run == {"started_at": 20.0, "attempts": 2, "progress": None}
        assert await records.put("k", {"a": 1}, only_new=True) is True
        assert await records.put("k", {"a": 2}, only_new=True) is False
        assert await records.get("k") == {"a": 1}
        await records.pop("k")
        assert await records.get("k") is None

    asyncio.run(scenario())
