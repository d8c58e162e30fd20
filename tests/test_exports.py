from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import BaseModel

import modal_fastapi_kit
from modal_fastapi_kit import exceptions


class In(BaseModel):
    x: int


def test_all_lists_exactly_the_public_names():
    # Every name of __all__ resolves (each is imported on first use), and nothing else does.
    for name in modal_fastapi_kit.__all__:
        assert getattr(modal_fastapi_kit, name) is not None
    assert set(modal_fastapi_kit._WHERE) == set(modal_fastapi_kit.__all__)
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        modal_fastapi_kit.Nope  # noqa: B018
    # Ruff's isort-style order (RUF022): constants, then classes, then functions.
    groups = [
        [n for n in modal_fastapi_kit.__all__ if n.isupper()],
        [n for n in modal_fastapi_kit.__all__ if n[0].isupper() and not n.isupper()],
        [n for n in modal_fastapi_kit.__all__ if n[0].islower()],
    ]
    assert modal_fastapi_kit.__all__ == [name for group in groups for name in sorted(group)]
    assert set(exceptions.__all__) == {
        name for name in vars(exceptions) if not name.startswith("_")
    } - {"annotations", "enum", "Mapping", "MappingProxyType", "dataclass", "as_predict_error"}


def _modules_after(code: str) -> set[str]:
    script = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_import_does_not_pull_torch_or_transformers():
    loaded = _modules_after("import modal_fastapi_kit")
    assert not {"torch", "transformers"} & loaded


WEB_STACK = {"fastapi", "starlette", "prometheus_client", "uvicorn", "modal"}


def _server_side(loaded: set[str]) -> set[str]:
    return {
        m
        for m in loaded
        if m.split(".")[0] in WEB_STACK
        or m.startswith(
            (
                "modal_fastapi_kit._http",
                "modal_fastapi_kit._backends",
                "modal_fastapi_kit._assembly",
                "modal_fastapi_kit._metrics",
                "modal_fastapi_kit._server",
                "modal_fastapi_kit._core.runtime",
                "modal_fastapi_kit._core.batcher",
                "modal_fastapi_kit._modal",
            )
        )
    }


def test_the_client_imports_neither_the_server_nor_the_web_stack():
    loaded = _modules_after("import modal_fastapi_kit.client")
    assert "modal_fastapi_kit.client" in loaded and "httpx" in loaded
    assert _server_side(loaded) == set()


def test_defining_a_service_imports_no_web_stack():
    code = """
from pydantic import BaseModel
from modal_fastapi_kit import ModelServer, gpu_service
class In(BaseModel):
    x: int
@gpu_service(route="/x")
class S(ModelServer[In, In]):
    def predict(self, item: In) -> In:
        return item
"""
    loaded = _modules_after(code)
    assert {m for m in loaded if m.split(".")[0] in WEB_STACK} == set()


def test_every_public_exception_is_what_some_answer_raises():
    """Each ServingError a client can get stands for at least one code of the table;
    ConfigError is what a wrong option raises at decoration time, JobCanceled what
    progress() raises inside the model's own code."""
    raised = {info.error for info in exceptions.ERROR_CODES.values()}
    for name in exceptions.__all__:
        cls = getattr(exceptions, name)
        if not (isinstance(cls, type) and issubclass(cls, exceptions.KitError)):
            continue
        if cls in (
            exceptions.KitError,
            exceptions.ConfigError,
            exceptions.JobCanceled,
            exceptions.ServingError,
        ):
            continue
        assert cls in raised, f"{name} is exported but no code stands for it"
    with pytest.raises(exceptions.ConfigError, match="max_batch_size"):

        @modal_fastapi_kit.gpu_service(max_batch_size=0)
        class Wrong(modal_fastapi_kit.ModelServer[In, In]):
            def predict(self, item: In) -> In:
                return item
