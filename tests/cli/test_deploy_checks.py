"""``check_service``, the program's way to what ``mfk check`` and ``mfk deploy`` find, and the
image's packages as pip installs them there: markers evaluated for the image's Python."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

from modal_fastapi_kit._deploy_checks import (
    Finding,
    Report,
    check_service,
    image_packages,
)
from modal_fastapi_kit._requirements import (
    applies,
    image_environment,
    installed_names,
    parse_requirement,
)

from .._servers import BIN, ROOT, no_modal_credentials

SERVICE = """\
from pydantic import BaseModel

from modal_fastapi_kit import ModelServer, gpu_service


class In(BaseModel):
    x: int


@gpu_service(name="{name}", gpu="A10", max_batch_size=4, max_containers=2, {options})
class Svc(ModelServer[In, In]):
    def load(self) -> None:
        import openai  # installed here; neither the image's pins nor Modal's runtime bring it

        self.client = openai

    def predict_batch(self, items: list[In]) -> list[In]:
        return items


app = Svc.modal_app()
"""


def import_file(path: Path) -> ModuleType:
    """Import ``path`` under its own name, the way Modal (and ``mfk``) import a service."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def service(tmp_path: Path, name: str, options: str) -> type:
    path = tmp_path / f"{name.replace('-', '_')}.py"
    path.write_text(SERVICE.format(name=name, options=options))
    svc: type = import_file(path).Svc
    return svc


def test_a_package_left_out_by_its_marker_is_an_error_with_its_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where: file:line relative to the working directory
    svc = service(
        tmp_path,
        "marked-below",
        """python_version="3.12", packages=['openai>=1.40; python_version < "3.11"']""",
    )
    report = check_service(svc)
    assert isinstance(report, Report)
    (error,) = report.errors
    assert isinstance(error, Finding)
    assert (error.code, error.severity) == ("missing-package", "error")
    line = next(n for n, text in enumerate(SERVICE.splitlines(), 1) if "import openai" in text)
    assert error.where == (f"marked_below.py:{line}",)
    assert "lists 'openai>=1.40; python_version < \"3.11\"'" in error.message
    assert "leaves it out on the image's Python 3.12" in error.message
    assert error.fix.startswith("change that marker so that it holds on Python 3.12")
    assert report.warnings == () and report.notes == ()
    # The same requirement on a Python its marker holds for installs it: nothing to report.
    svc = service(
        tmp_path,
        "marked-above",
        """python_version="3.12", packages=['openai>=1.40; python_version >= "3.11"']""",
    )
    assert check_service(svc).findings == ()


def test_the_report_as_data_is_what_mfk_check_json_prints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # as `mfk check` runs below, so the paths are the same
    svc = service(tmp_path, "as-data", "packages=[]")
    report = check_service(svc)
    assert [f.code for f in report.findings] == ["missing-package"]
    assert report.findings[0].fix.startswith('add "openai" to packages=[...]')
    assert (report.service, report.app) == ("Svc", "as-data")
    assert report.idle_cost.max_containers == 2 and report.idle_cost.idle_gpus == 0
    data = report.as_dict()
    assert data["counts"] == {"error": 1, "warning": 0, "note": 0}
    assert data["findings"] == [f.as_dict() for f in report.findings]
    assert set(data["findings"][0]) == {"code", "severity", "message", "fix", "where"}
    done = subprocess.run(
        [str(BIN / "mfk"), "check", "--json", "as_data.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    printed = json.loads(done.stdout)
    assert printed.pop("target") == "as_data.py"
    assert printed == json.loads(json.dumps(data))


def test_the_embeddings_example_checks_clean():
    from examples.embeddings import Embedder

    report = check_service(Embedder)
    assert report.findings == ()
    titles = [title for title, _ in report.deployment]
    assert titles[:3] == ["app embeddings-api", "GPU class", "web endpoint"]


# -- the image's packages, evaluated for the image -------------------------------------------


def test_a_dependency_s_marker_is_evaluated_for_the_image_s_python_not_this_one():
    # anyio needs exceptiongroup below Python 3.11 only; Modal's runtime does not bring it.
    assert "exceptiongroup" in image_packages(("anyio",), "3.10").present
    assert "exceptiongroup" not in image_packages(("anyio",), "3.12").present
    extras = image_packages(('fastapi[standard]; python_version >= "3.11"',), "3.12")
    assert "uvicorn" in extras.present
    left_out = image_packages(('fastapi[standard]; python_version >= "3.11"',), "3.10")
    assert "uvicorn" not in left_out.present and "fastapi" not in left_out.present
    assert left_out.left_out == ('fastapi[standard]; python_version >= "3.11"',)


@pytest.mark.parametrize(
    ("marker", "holds"),
    [
        ('python_version < "3.11"', False),
        ('python_version >= "3.12"', True),
        ('python_full_version >= "3.12.0"', True),
        ('sys_platform == "linux"', True),
        ('sys_platform == "darwin"', False),
        ('platform_system == "Windows"', False),
        ('platform_machine == "x86_64"', True),
        ('platform_machine == "arm64"', False),
        ('implementation_name == "cpython"', True),
        ('extra == "gpu"', False),
    ],
)
def test_markers_are_evaluated_for_a_modal_container(marker, holds):
    requirement = parse_requirement(f"pkg>=1; {marker}")
    assert requirement is not None
    assert applies(requirement, image_environment("3.12")) is holds
    assert applies(requirement, image_environment("3.12"), extras=("gpu",)) is (
        holds or "extra" in marker
    )


def test_installed_names_are_canonical_and_leave_out_what_names_no_distribution():
    specs = ["Foo_Bar[x]>=1", 'Baz; python_version < "3.11"', "git+https://example.com/r", "q.whl"]
    assert installed_names(specs, image_environment("3.12")) == {"foo-bar"}
    assert installed_names(specs, image_environment("3.10")) == {"foo-bar", "baz"}
    assert re.fullmatch(r"3\.12\.\d+", image_environment("3.12").python_full_version)
    assert image_environment("3.12.4").python_full_version == "3.12.4"


# -- the README's first example -----------------------------------------------------------------


def test_the_readme_s_first_example_is_deployable_as_shown(tmp_path):
    readme = (ROOT / "README.md").read_text()
    first = re.findall(r"```python\n(.*?)```", readme, flags=re.S)[0]
    assert '@gpu_service(\n    name="embeddings-api"' in first
    (tmp_path / "embeddings.py").write_text(first)
    done = subprocess.run(
        [str(BIN / "mfk"), "deploy", "embeddings.py"],
        cwd=tmp_path,
        env=no_modal_credentials(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Not refused by the checks: only the credentials, which this machine has none of, stop it.
    assert done.returncode == 1
    assert done.stderr.startswith("error: no Modal credentials found"), done.stderr
    checked = subprocess.run(
        [str(BIN / "mfk"), "check", "--json", "embeddings.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = json.loads(checked.stdout)
    assert report["counts"]["error"] == 0, report["findings"]
    assert [f["code"] for f in report["findings"]] == ["unbounded-autoscaling"]


def test_the_source_of_a_service_is_read_not_run(tmp_path):
    """The checks read a file's imports with ``ast``; one that would fail on import is never
    imported by them (only the service module itself is, by whoever loads it)."""
    (tmp_path / "helper_never_imported.py").write_text("raise SystemExit('imported')\n")
    body = textwrap.dedent(
        """
        from pydantic import BaseModel
        from modal_fastapi_kit import ModelServer, gpu_service

        class In(BaseModel):
            x: int

        @gpu_service(name="reads-only", gpu="A10", max_batch_size=4, max_containers=1)
        class Svc(ModelServer[In, In]):
            def load(self) -> None:
                import helper_never_imported  # noqa: F401

            def predict_batch(self, items: list[In]) -> list[In]:
                return items

        app = Svc.modal_app()
        """
    )
    path = tmp_path / "reads_only.py"
    path.write_text(body)
    sys.path.insert(0, str(tmp_path))
    try:
        report = check_service(import_file(path).Svc)
    finally:
        sys.path.remove(str(tmp_path))
    assert [f.code for f in report.errors] == ["local-module-not-shipped"]
    assert (
        report.errors[0].fix == 'set local_sources=["helper_never_imported"] in @gpu_service(...)'
    )


JOINING = """\
from pydantic import BaseModel

from modal_fastapi_kit import END, ModelServer, gpu_service


class In(BaseModel):
    x: int


@gpu_service(name="{name}", gpu="A10", max_containers=2, {options})
class Svc(ModelServer[In, In]):
    def join(self, items: dict[int, In]) -> None:
        self.keys = set(items)

    def step(self) -> dict[int, object]:
        return {{key: END for key in self.keys}}

    def leave(self, keys: list[int]) -> None:
        self.keys -= set(keys)


app = Svc.modal_app()
"""


@pytest.mark.parametrize(
    ("options", "flagged"), [("max_batch_size=1", True), ("max_batch_size=64", False)]
)
def test_a_joining_service_that_runs_one_stream_at_a_time_is_flagged(
    tmp_path, monkeypatch, options, flagged
):
    monkeypatch.chdir(tmp_path)
    name = f"joining-{'one' if flagged else 'many'}"
    path = tmp_path / f"{name.replace('-', '_')}.py"
    path.write_text(JOINING.format(name=name, options=options))
    codes = [f.code for f in check_service(import_file(path).Svc).findings]
    assert ("joining-one-at-a-time" in codes) is flagged


def test_a_service_with_jobs_shows_its_jobs_class_and_webhook_function():
    from examples.corpus import CorpusEmbedder

    report = check_service(CorpusEmbedder)
    assert report.findings == ()
    sections = dict(report.deployment)
    assert list(sections)[:4] == ["app corpus-embeddings", "GPU class", "web endpoint", "jobs"]
    jobs = dict(sections["jobs"])
    assert jobs["class"] == "CorpusEmbedder_jobs (methods: mfk_job)"
    assert jobs["timeout"].startswith("3660s")  # read back through info(): run_timeout + 60
    assert jobs["records*"] == "modal.Dict 'corpus-embeddings-jobs'"
    assert jobs["webhooks"].startswith("CorpusEmbedder_webhooks (CPU), timeout ")
    assert "POST /corpus/jobs" in dict(sections["web endpoint"])["routes"]
