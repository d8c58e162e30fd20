"""constraints.txt, the lock every install here uses: it pins every requirement of
pyproject.toml within its range, the CPU torch the Makefile installs, and the exact ruff and mypy
of the dev extra. `make lock` regenerates it."""

from __future__ import annotations

import re

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from ._servers import ROOT

tomllib = pytest.importorskip("tomllib")

LOCK = ROOT / "constraints.txt"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
MAKEFILE = (ROOT / "Makefile").read_text()


def locked() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and " " not in line, f"not a pin: {line!r}"
            key = canonicalize_name(name)
            assert key not in pins, f"{name} is pinned twice"
            pins[key] = Version(version)
    return pins


def requirements() -> list[Requirement]:
    listed = list(PROJECT["dependencies"])
    for extra in PROJECT["optional-dependencies"].values():
        listed += extra
    return [Requirement(r) for r in listed]


def test_every_requirement_is_pinned_within_its_range():
    pins = locked()
    for requirement in requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in constraints.txt: run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside {requirement}: run `make lock`"
        )


def test_the_makefile_installs_every_extra_against_the_lock():
    extras = re.search(r"^EXTRAS := (\S+)$", MAKEFILE, flags=re.M)
    assert extras is not None
    assert sorted(extras.group(1).split(",")) == sorted(PROJECT["optional-dependencies"])
    assert re.search(r"^LOCK := constraints\.txt$", MAKEFILE, flags=re.M)
    install = re.search(r"^\$\(VENV\)/\.installed: .*?(?=^\S)", MAKEFILE, flags=re.M | re.S)
    assert install is not None
    pip_lines = [line for line in install.group(0).splitlines() if "pip install" in line]
    assert pip_lines and all("-c $(LOCK)" in line for line in pip_lines)
    assert "$(LOCK)" in install.group(0).splitlines()[0]  # a new lock reinstalls
    assert re.search(r"^lock:", MAKEFILE, flags=re.M)


def test_torch_is_the_cpu_build_s_version_with_no_cuda_packages():
    pins = locked()
    torch = re.search(r"^TORCH \?= torch==(\S+)$", MAKEFILE, flags=re.M)
    assert torch is not None
    assert str(pins["torch"]) == torch.group(1) == "2.13.0"  # no +cpu: PyPI has none
    gpu_only = [n for n in pins if n.startswith(("nvidia-", "cuda-")) or n == "triton"]
    assert gpu_only == []


def test_the_linters_are_pinned_exactly_and_to_the_locked_version():
    pins = locked()
    for name in ("ruff", "mypy"):
        (requirement,) = [
            Requirement(r) for r in PROJECT["optional-dependencies"]["dev"] if r.startswith(name)
        ]
        (spec,) = requirement.specifier
        assert spec.operator == "==" and Version(spec.version) == pins[name]


def test_pip_is_pinned_too():
    assert "pip" in locked()
