"""schemathesis, with all its checks, against the served examples' own OpenAPI (and a file
route's): every answer the routes give is one the schema declares (status, content type,
body), none is a 500."""

from __future__ import annotations

from pathlib import Path

import pytest

from ._servers import BIN, free_port, running, wait_ready

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from examples import tiny_lm

    return tiny_lm.build(tmp_path_factory.mktemp("tiny-lm") / "model")


@pytest.mark.parametrize(
    "example",
    [
        "examples/embeddings.py",
        "examples/openai_embeddings.py",
        "examples/chat.py",
        # a file route: JSON, multipart and raw bodies in, the file's bytes out
        "tests/services/files.py:Thumb",
    ],
)
def test_schemathesis_finds_nothing(example, tiny_lm_dir):
    port = free_port()
    serve = [str(BIN / "mfk"), "serve", example, "--port", str(port)]
    with running(serve, env={"TINY_LM_DIR": str(tiny_lm_dir)}):
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)
        check = [
            str(BIN / "st"),
            "run",
            f"{base}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            "30",
            "--workers",
            "1",
            "--seed",
            "20261128",
        ]
        with running(check) as st:
            code = st.proc.wait(240)
    assert code == 0, st.output[-6000:]
    assert "passed" in st.output
