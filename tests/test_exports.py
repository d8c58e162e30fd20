from __future__ import annotations

import subprocess
import sys

import modal_fastapi_kit


def test_all_lists_exactly_the_public_names():
    public = {name for name in vars(modal_fastapi_kit) if not name.startswith("_")}
    submodules = {"cli", "openai"}  # public subpackages, attributes once imported
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
