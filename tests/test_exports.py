from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import modal_fastapi_kit
from modal_fastapi_kit import exceptions


def test_all_lists_exactly_the_public_names():
    public = {name for name in vars(modal_fastapi_kit) if not name.startswith("_")}
    # public submodules, attributes once imported
    submodules = {"cli", "client", "exceptions", "openai", "testing"}
    assert set(modal_fastapi_kit.__all__) == public - submodules
    # Ruff's isort-style order (RUF022): constants, then classes, then functions.
    groups = [
        [n for n in modal_fastapi_kit.__all__ if n.isupper()],
        [n for n in modal_fastapi_kit.__all__ if n[0].isupper() and not n.isupper()],
        [n for n in modal_fastapi_kit.__all__ if n[0].islower()],
    ]
    assert modal_fastapi_kit.__all__ == [name for group in groups for name in sorted(group)]


def test_import_does_not_pull_torch_or_transformers():
    code = (
        "import sys, modal_fastapi_kit; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_public_exception_is_raised_or_is_the_base_of_one():
    package = Path(modal_fastapi_kit.__file__).parent
    source = "\n".join(
        path.read_text() for path in package.rglob("*.py") if path.name != "exceptions.py"
    )
    raised = {name for name in exceptions.__all__ if f"{name}(" in source}
    for name in exceptions.__all__:
        cls = getattr(exceptions, name)
        subclasses = {sub.__name__ for sub in cls.__subclasses__()}
        assert name in raised or subclasses & raised, f"{name} is exported but never raised"
