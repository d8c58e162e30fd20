"""``mfk check`` finds imports the Modal image lacks, unbounded GPU autoscaling and what an
idle deployment holds in GPU-hours; ``--json`` carries it all for CI. The command runs as a
user runs it: ``.venv/bin/mfk check FILE.py`` in a fresh process; the parts it is made of
(``modal_fastapi_kit._deploy_checks``) are called directly."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from modal_fastapi_kit._config import ServiceConfig
from modal_fastapi_kit._deploy_checks import gpu_count, idle_cost, image_packages, import_findings
from modal_fastapi_kit._requirements import canonicalize_name, requirement_name

from .._servers import BIN, ROOT, no_modal_credentials

DOC = (ROOT / "docs" / "deploy.md").read_text()
BLOCKS = re.findall(r"^```(\w+)\n(.*?)^```", DOC, flags=re.S | re.M)

# A service with nothing to warn about: GPU, bounded, batched, app bound. Tests add to it.
SERVICE = """\
from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel

from modal_fastapi_kit import ModelServer, gpu_service
{top}
if TYPE_CHECKING:
    import pandas


class In(BaseModel):
    x: int


@gpu_service(name="svc", gpu="A10", max_containers=4, max_batch_size=8, {options})
class Svc(ModelServer[In, In]):
    def load(self) -> None:
{load}

    def predict_batch(self, items: list[In]) -> list[In]:
        return items


app = Svc.modal_app()
"""


def write_service(
    folder: Path, *, load: str = "pass", top: str = "", options: str = "packages=[]"
) -> Path:
    path = folder / "svc.py"
    body = textwrap.indent(textwrap.dedent(load).strip(), " " * 8)
    path.write_text(SERVICE.format(top=textwrap.dedent(top), options=options, load=body))
    return path


def line_of(path: Path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def check(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "mfk"), "check", *args, "svc.py"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )


def check_json(folder: Path, *args: str) -> dict:
    done = check(folder, "--json", *args)
    assert done.returncode in (0, 1), done.stderr
    report: dict = json.loads(done.stdout)
    return report


def codes(report: dict) -> list[str]:
    return [f["code"] for f in report["findings"]]


def findings_of(out: str, severity: str) -> list[str]:
    """The ``severity: message`` lines of the text output, each with its ``  fix:`` line."""
    lines = out.splitlines()
    return [
        f"{line}\n{lines[n + 1]}"
        for n, line in enumerate(lines)
        if line.startswith(f"{severity}: ")
    ]


def test_lazy_imports_in_load_that_the_image_lacks_are_named_with_the_fix(tmp_path):
    path = write_service(
        tmp_path,
        load="""
        import torch
        from transformers import AutoModel
        """,
    )
    done = check(tmp_path)
    assert done.returncode == 0, done.stderr
    errors = findings_of(done.stdout, "error")
    torch_line, transformers_line = line_of(path, "import torch"), line_of(path, "transformers")
    assert any(
        f"torch is imported (svc.py:{torch_line} in Svc.load)" in error
        and "ModuleNotFoundError" in error
        and '\n  fix: add "torch" to packages=[...]' in error
        for error in errors
    ), errors
    assert any(
        f"transformers is imported (svc.py:{transformers_line} in Svc.load)" in error
        and '\n  fix: add "transformers" to packages=[...]' in error
        for error in errors
    ), errors
    assert len(errors) == 2, done.stdout  # pandas (TYPE_CHECKING), pydantic, the kit: fine
    assert "warning: " not in done.stdout and "no warnings" not in done.stdout
    assert check(tmp_path, "--strict").returncode == 1


def test_the_same_imports_listed_in_packages_or_brought_by_one_pass(tmp_path):
    _needs_the_examples_installed()
    write_service(
        tmp_path,
        load="""
        import torch
        from transformers import AutoModel
        import numpy, starlette, typing_extensions, aiohttp
        """,
        options='packages=["torch==2.13.0", "Transformers[torch]>=4.40"]',
    )
    report = check_json(tmp_path, "--strict")
    assert report["findings"] == [], report["findings"]  # starlette: fastapi; aiohttp: Modal
    # sentence-transformers depends on transformers, torch and numpy (as installed here).
    write_service(
        tmp_path,
        load="import torch, numpy\nfrom transformers import AutoModel",
        options='packages=["sentence-transformers"]',
    )
    assert check_json(tmp_path)["findings"] == []


MARKED = """python_version="3.12", packages=['openai>=1.40; python_version < "{below}"']"""


def test_a_package_whose_marker_leaves_out_the_image_s_python_is_missing(tmp_path):
    path = write_service(tmp_path, load="import openai", options=MARKED.format(below="3.11"))
    done = check(tmp_path, "--strict")
    assert done.returncode == 1, done.stderr
    (error,) = findings_of(done.stdout, "error")
    assert error.startswith(
        f"error: openai is imported (svc.py:{line_of(path, 'import openai')} in Svc.load) but the "
        "image does not install it: packages=[...] lists 'openai>=1.40; python_version < \"3.11\"'"
        ", whose marker leaves it out on the image's Python 3.12, so the container fails with "
        "ModuleNotFoundError"
    ), error
    assert "\n  fix: change that marker so that it holds on Python 3.12" in error
    assert codes(check_json(tmp_path)) == ["missing-package"]
    write_service(tmp_path, load="import openai", options=MARKED.format(below="3.13"))
    assert check_json(tmp_path, "--strict")["findings"] == []


def test_an_import_guarded_by_except_import_error_is_a_note_that_does_not_fail_strict(tmp_path):
    path = write_service(
        tmp_path,
        top="""
        try:
            import ujson as fastjson
        except ImportError:
            fastjson = None
        """,
    )
    done = check(tmp_path, "--strict")
    assert done.returncode == 0, done.stdout + done.stderr
    notes = findings_of(done.stdout, "note")
    assert len(notes) == 1
    guarded = (
        f"ujson is imported only inside try/except ImportError (svc.py:{line_of(path, 'ujson')})"
    )
    assert guarded in notes[0]
    assert '\n  fix: if the deployment needs it, add "ujson" to packages=[...]' in notes[0]
    assert "no warnings" in done.stdout
    report = check_json(tmp_path, "--strict")
    assert [(f["code"], f["severity"]) for f in report["findings"]] == [
        ("optional-package", "note")
    ]
    assert report["counts"] == {"error": 0, "warning": 0, "note": 1}


def test_a_local_helper_is_walked_and_its_missing_package_named(tmp_path):
    helper = tmp_path / "helpers.py"
    helper.write_text("import json\n\n\ndef resize(image):\n    import cv2\n\n    return cv2\n")
    path = write_service(tmp_path, top="import helpers\n", options='local_sources=["helpers"]')
    report = check_json(tmp_path)
    assert codes(report) == ["missing-package"], report["findings"]
    (error,) = report["findings"]
    assert error["where"] == ["helpers.py:5"] and error["severity"] == "error"
    assert "cv2 is imported (helpers.py:5 in resize)" in error["message"]
    assert error["fix"].startswith('add "opencv-python" to packages=[...]')
    # Without local_sources Modal does not ship the helper at all.
    write_service(tmp_path, top="import helpers\n")
    report = check_json(tmp_path)
    assert sorted(codes(report)) == ["local-module-not-shipped", "missing-package"]
    shipped = next(f for f in report["findings"] if f["code"] == "local-module-not-shipped")
    assert shipped["where"] == [f"svc.py:{line_of(path, 'import helpers')}"]
    assert shipped["fix"] == 'set local_sources=["helpers"] in @gpu_service(...)'
    assert shipped["severity"] == "error"


def test_a_local_package_is_followed_through_relative_imports(tmp_path):
    package = tmp_path / "textkit"
    package.mkdir()
    (package / "__init__.py").write_text("from .model import Model\n")
    (package / "model.py").write_text("from . import config\n\n\nclass Model:\n    pass\n")
    (package / "config.py").write_text("def read():\n    import yaml\n\n    return yaml\n")
    write_service(tmp_path, top="from textkit import Model\n", options='local_sources=["textkit"]')
    report = check_json(tmp_path)
    assert [(f["code"], f["where"]) for f in report["findings"]] == [
        ("missing-package", ["textkit/config.py:2"])
    ]
    assert report["findings"][0]["fix"].startswith('add "pyyaml" to packages=[...]')
    write_service(tmp_path, options='local_sources=["textkt"]')
    report = check_json(tmp_path)
    assert codes(report) == ["local-source-not-found"]
    assert "'textkt'" in report["findings"][0]["message"]


def test_json_carries_the_table_the_idle_cost_and_each_finding_with_code_fix_and_where(
    tmp_path,
):
    path = write_service(
        tmp_path,
        top='print("importing svc")\n',
        load="import torch",
        options='gpu="H100:2", min_containers=1, buffer_containers=1, scaledown_window=300',
    )
    path.write_text(path.read_text().replace('gpu="A10", max_containers=4, ', ""))
    done = check(tmp_path, "--json", "--strict")
    assert done.returncode == 1
    report = json.loads(done.stdout)  # stdout is the JSON and nothing else
    assert "importing svc" in done.stderr
    assert report["service"] == "Svc" and report["app"] == "svc"
    sections = {s["section"]: {r["setting"]: r for r in s["rows"]} for s in report["deployment"]}
    assert sections["GPU class"]["gpu"] == {"setting": "gpu", "value": "H100:2", "from_info": True}
    assert sections["GPU class"]["autoscaling"]["from_info"] is False
    assert codes(report) == [
        "missing-package",
        "min-containers-billed-idle",
        "unbounded-autoscaling",
    ]
    assert [f["severity"] for f in report["findings"]] == ["error", "warning", "warning"]
    for finding in report["findings"]:
        assert finding["message"] and finding["fix"]
        assert all(where.startswith("svc.py:") for where in finding["where"])
    decorator = f"svc.py:{line_of(path, '@gpu_service')}"
    assert report["findings"][2]["where"] == [decorator]
    assert report["idle_cost"] == {
        "gpu": ["H100:2"],
        "gpus_per_container": 2,
        "min_containers": 1,
        "buffer_containers": 1,
        "max_containers": None,
        "scaledown_window_s": 300,
        "idle_gpus": 2,
        "idle_gpu_hours_per_day": 48.0,
        "idle_gpu_hours_per_month": 1440.0,
        "days_per_month": 30,
        "buffer_gpus_while_active": 2,
        "burst_tail_gpu_hours_per_container": 0.1667,
        "burst_tail_gpu_hours_at_max": None,
    }
    assert report["counts"] == {"error": 1, "warning": 2, "note": 0}


def test_unbounded_max_containers_is_flagged_and_a_bound_is_not(tmp_path):
    path = write_service(tmp_path)
    path.write_text(path.read_text().replace("max_containers=4, ", ""))
    done = check(tmp_path)
    (warning,) = findings_of(done.stdout, "warning")
    assert warning.startswith("warning: max_containers is not set")
    assert "as many A10 containers as the load asks for" in warning
    assert "\n  fix: set max_containers=N" in warning
    assert "after a burst       0.0333 GPU-h per container" in done.stdout
    assert "no max_containers, so no bound" in done.stdout
    write_service(tmp_path)  # max_containers=4
    done = check(tmp_path)
    assert "warning: " not in done.stdout and "no warnings" in done.stdout
    assert "0.133 GPU-h after scaling to max_containers=4" in done.stdout


def test_idle_gpu_hours_printed_for_one_a10_and_for_h100_pairs(tmp_path):
    write_service(tmp_path, options="min_containers=1")
    out = check(tmp_path).stdout
    assert "gpus per container  1: A10" in out
    assert (
        "held while idle     1 container(s) x 1 = 1 GPU(s): 24 GPU-h a day, 720 GPU-h a month"
        in out
    )
    assert "min_containers=1 keeps that many A10 containers running, and billed, while idle" in out
    path = write_service(tmp_path, options="min_containers=1")
    path.write_text(path.read_text().replace('gpu="A10"', 'gpu="H100:2"'))
    out = check(tmp_path).stdout
    assert (
        "held while idle     1 container(s) x 2 = 2 GPU(s): 48 GPU-h a day, 1440 GPU-h a month"
        in out
    )


@pytest.mark.parametrize(
    ("options", "per_container", "day", "month", "tail", "at_max"),
    [
        ({"gpu": "A10", "min_containers": 1}, 1, 24.0, 720.0, 120 / 3600, None),
        (
            {"gpu": "H100:2", "min_containers": 1, "max_containers": 3},
            2,
            48.0,
            1440.0,
            240 / 3600,
            2 * 240 / 3600,
        ),
        ({"gpu": ("H100", "A100-80GB:2"), "min_containers": 2}, 2, 96.0, 2880.0, 240 / 3600, None),
        (
            {"gpu": "T4", "scaledown_window": 600, "max_containers": 2},
            1,
            0.0,
            0.0,
            600 / 3600,
            1200 / 3600,
        ),
        ({}, 0, 0.0, 0.0, 0.0, None),
    ],
)
def test_idle_cost_figures(options, per_container, day, month, tail, at_max):
    cost = idle_cost(ServiceConfig.from_options({"name": "svc", **options}))
    assert cost.gpus_per_container == per_container
    assert (cost.idle_gpu_hours_per_day, cost.idle_gpu_hours_per_month) == (day, month)
    assert cost.burst_tail_gpu_hours_per_container == pytest.approx(tail)
    assert cost.burst_tail_gpu_hours_at_max == (None if at_max is None else pytest.approx(at_max))


def test_buffer_containers_count_only_while_serving():
    cost = idle_cost(
        ServiceConfig.from_options(
            {"name": "svc", "gpu": "L4:4", "min_containers": 0, "buffer_containers": 2}
        )
    )
    assert cost.idle_gpu_hours_per_day == 0.0  # Modal keeps buffers only while inputs arrive
    assert cost.buffer_gpus_while_active == 8


@pytest.mark.parametrize(("gpu", "count"), [("A10", 1), ("H100:2", 2), ("a100-80gb:8", 8)])
def test_gpu_count(gpu, count):
    assert gpu_count(gpu) == count


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("torch==2.13.0", ("torch", frozenset())),
        (
            "Sentence_Transformers[Train,onnx]>=3 ; python_version>'3.9'",
            ("sentence-transformers", frozenset({"train", "onnx"})),
        ),
        ("pkg @ https://example.com/pkg-1.0.whl", ("pkg", frozenset())),
        ("git+https://github.com/org/repo", None),
        ("https://example.com/pkg-1.0.whl", None),
        ("./wheels/pkg-1.0.whl", None),
        ("pkg-1.0.whl", None),  # pip takes it for a file
        ("-e .", None),
    ],
)
def test_requirement_names_are_normalised_without_versions_or_extras(spec, parsed):
    assert requirement_name(spec) == parsed


def test_the_image_holds_the_dependencies_of_its_packages_and_modals_runtime():
    image = image_packages(("fastapi==0.165.0", "not-installed-here>=1"), "3.12")
    assert {"fastapi", "starlette", "pydantic", "pydantic-core", "anyio"} <= image.present
    assert {"modal", "grpclib", "protobuf", "modal-fastapi-kit"} <= image.present
    assert "uvicorn" not in image.present  # only fastapi[standard] brings it
    assert image.unread == ("not-installed-here>=1",) and image.left_out == ()
    assert "uvicorn" in image_packages(("fastapi[standard]",), "3.12").present
    assert canonicalize_name("Foo_Bar.baz") == "foo-bar-baz"


def test_a_namespace_package_is_not_taken_for_another_of_its_distributions(tmp_path):
    path = tmp_path / "ns_svc.py"
    path.write_text(
        "def load():\n"
        "    import google.cloud.pubsub_v1\n"
        "    from google.protobuf import json_format\n"  # protobuf: in Modal's runtime
    )
    (problem,) = import_findings(path, ("fastapi==0.165.0",), (), "3.12")
    assert (problem.code, problem.severity) == ("missing-package", "error")
    assert problem.where[0].endswith("ns_svc.py:2")
    assert problem.fix.startswith('add "google-cloud-pubsub-v1" to packages=[...] (a name guessed')


# -- the `mfk check` section of docs/deploy.md ---------------------------------------------


def doc_block(lang: str, marker: str) -> str:
    (code,) = [code for kind, code in BLOCKS if kind == lang and marker in code]
    return code


def without_local_versions(text: str) -> str:
    """Drop what depends on this machine: the Python and pip rows, installed versions."""
    text = re.sub(r"^  (python|pip)\*.*$", "", text, flags=re.M)
    return re.sub(r" \(\S+ \S+ is installed here\)", "", text)


def test_the_docs_show_what_mfk_check_prints_for_the_example():
    block = doc_block("console", "$ mfk check examples/embeddings.py")
    command, _, shown = block.partition("\n")
    done = subprocess.run(
        [str(BIN / "mfk"), *command.removeprefix("$ mfk ").split()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert without_local_versions(shown) == without_local_versions(done.stdout)


def console_session(block: str) -> list[tuple[str, list[str], str]]:
    """The commands of a console block, each with the lines shown under it and the status
    the ``$ echo $?`` after it shows."""
    steps: list[tuple[str, list[str], str]] = []
    for line in block.splitlines():
        if line == "$ echo $?":
            steps[-1] = (steps[-1][0], steps[-1][1], "?")
        elif line.startswith("$ "):
            steps.append((line[2:], [], ""))
        elif steps[-1][2] == "?":
            steps[-1] = (steps[-1][0], steps[-1][1], line)
        else:
            steps[-1][1].append(line)
    return steps


def test_the_docs_classifier_fails_strict_and_its_deploy_is_refused_as_shown(tmp_path):
    _needs_the_examples_installed()
    (tmp_path / "classifier.py").write_text(doc_block("python", "class Classifier"))
    steps = console_session(doc_block("console", "$ mfk check --strict classifier.py"))
    assert [command for command, _, _ in steps] == [
        "mfk check --strict classifier.py",
        "mfk deploy classifier.py",
    ]
    for command, shown, status in steps:
        done = subprocess.run(
            [str(BIN / "mfk"), *command.split()[1:]],
            cwd=tmp_path,
            env=no_modal_credentials(tmp_path),  # never a deploy, whatever this machine holds
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert status == str(done.returncode) == "1", done.stderr
        printed = (done.stdout + done.stderr).splitlines()
        if shown[0] == "...":  # the table, left out
            shown = shown[1:]
            printed = printed[-len(shown) :]
        assert [without_local_versions(line) for line in shown] == [
            without_local_versions(line) for line in printed
        ]
    assert (
        "--skip-checks"
        in subprocess.run(
            [str(BIN / "mfk"), "deploy", "--help"], capture_output=True, text=True, timeout=60
        ).stdout
    )


def test_the_docs_ci_snippet_reads_the_json_and_stops_on_findings(tmp_path, monkeypatch, capsys):
    (tmp_path / "classifier.py").write_text(doc_block("python", "class Classifier"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(SystemExit, match=r"mfk check found 1 error\(s\), 0 warning\(s\)"):
        exec(compile(doc_block("python", '"--json"'), "deploy.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("error missing-package classifier.py:18 transformers is imported")
    assert printed[1].startswith('  fix: add "transformers" to packages=[...]')
    assert printed[2] == "0.0 GPU-hours a month while idle"


def test_the_docs_program_snippet_calls_the_checks(tmp_path, monkeypatch, capsys):
    (tmp_path / "classifier.py").write_text(doc_block("python", "class Classifier"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "classifier", raising=False)
    exec(compile(doc_block("python", "check_service(Classifier)"), "deploy.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("missing-package ('classifier.py:18',")
    assert 'add "transformers" to packages=[...]' in printed[0]
    assert printed[1] == "0 warnings; 0.0 idle GPU-hours"


def _needs_the_examples_installed() -> None:
    """These read torch's and transformers' installed metadata (the examples extra)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
