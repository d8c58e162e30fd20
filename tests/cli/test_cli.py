"""``mfk`` command line: errors a user can fix are one line and exit status 2."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import httpx
import pytest

from modal_fastapi_kit.cli import main

from .._servers import BIN, free_port, running, wait_ready


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "missing.py"], "file not found: missing.py"),
        (["serve", "examples/embeddings.txt"], "is not a Python file"),
        (["serve", "examples/embeddings.py:Nope"], "has no class 'Nope'"),
        (["serve", "examples/embeddings.py:EmbedIn"], "is not a @gpu_service class"),
        (["serve", "examples/__init__.py"], "defines no @gpu_service class"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(args, message):
    result = subprocess.run(
        [str(BIN / "mfk"), *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_bad_config_in_the_file_is_one_line(tmp_path: Path, capsys):
    bad = tmp_path / "bad_service.py"
    bad.write_text(
        textwrap.dedent(
            """
            from pydantic import BaseModel
            from modal_fastapi_kit import ModelServer, gpu_service

            class In(BaseModel):
                x: int

            @gpu_service(max_batch_size=0)
            class Bad(ModelServer[In, In]):
                def predict(self, item: In) -> In:
                    return item
            """
        )
    )
    assert main(["serve", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "max_batch_size=0 is invalid" in err and "Traceback" not in err


def test_several_services_in_one_file_need_a_class_name(tmp_path: Path, capsys):
    two = tmp_path / "two_services.py"
    two.write_text(
        textwrap.dedent(
            """
            from pydantic import BaseModel
            from modal_fastapi_kit import ModelServer, gpu_service

            class In(BaseModel):
                x: int

            @gpu_service()
            class A(ModelServer[In, In]):
                def predict(self, item: In) -> In:
                    return item

            @gpu_service()
            class B(ModelServer[In, In]):
                def predict(self, item: In) -> In:
                    return item
            """
        )
    )
    assert main(["serve", str(two)]) == 2
    assert "several services (A, B)" in capsys.readouterr().err


def test_serve_a_class_by_name_and_stop_cleanly(tmp_path: Path):
    (tmp_path / "echo_service.py").write_text(
        textwrap.dedent(
            """
            from pydantic import BaseModel
            from modal_fastapi_kit import ModelServer, gpu_service

            class In(BaseModel):
                text: str

            @gpu_service(route="/echo")
            class Echo(ModelServer[In, In]):
                def predict(self, item: In) -> In:
                    return In(text=item.text.upper())
            """
        )
    )
    port = free_port()
    target = f"{tmp_path / 'echo_service.py'}:Echo"
    with running([str(BIN / "mfk"), "serve", target, "--port", str(port)]) as p:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, timeout=60)
        assert httpx.post(f"{base}/echo", json={"text": "hi"}).json() == {"text": "HI"}
    # Stopped with SIGINT (Ctrl-C): a graceful shutdown, and the shell's 130.
    assert p.proc.returncode == 130, p.output
    assert "Application shutdown complete" in p.output


def test_a_model_that_fails_to_load_stops_serve_with_status_1(tmp_path: Path):
    (tmp_path / "broken_service.py").write_text(
        textwrap.dedent(
            """
            from pydantic import BaseModel
            from modal_fastapi_kit import ModelServer, gpu_service

            class In(BaseModel):
                text: str

            @gpu_service()
            class Broken(ModelServer[In, In]):
                def load(self) -> None:
                    raise FileNotFoundError("/weights/model.safetensors")

                def predict(self, item: In) -> In:
                    return item
            """
        )
    )
    port = free_port()
    with running(
        [str(BIN / "mfk"), "serve", str(tmp_path / "broken_service.py"), "--port", str(port)]
    ) as p:
        p.wait_for_line(r"error: Broken.load\(\) raised FileNotFoundError", timeout=60)
        assert p.proc.wait(30) == 1


def test_mfk_and_modal_fastapi_kit_are_the_same_command():
    for name in ("mfk", "modal-fastapi-kit"):
        result = subprocess.run(
            [str(BIN / name), "--help"], capture_output=True, text=True, timeout=60, check=True
        )
        assert "serve" in result.stdout
