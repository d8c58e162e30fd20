"""Every code block in docs/jobs.md runs: the curl session against ``mfk serve
examples/corpus.py``, the page's own service (served with ``mfk serve``), its typed client and
its webhook receiver, which gets a real, signed call."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modal_fastapi_kit._jobs.status import JobStatus

from .._docs import fenced_blocks
from .._servers import BIN, ROOT, ThreadedServer, free_port, running, wait_ready

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

PAGE = ROOT / "docs" / "jobs.md"
BLOCKS = fenced_blocks(PAGE)
PYTHON = [b.code for b in BLOCKS if b.lang == "python"]
BASH = [b.code for b in BLOCKS if b.lang == "bash"]
(SAMPLE,) = [b.code for b in BLOCKS if b.lang == "json"]


def bash_block(containing: str) -> str:
    found = [code for code in BASH if containing in code]
    assert len(found) == 1, containing
    return found[0]


def python_block(containing: str) -> str:
    found = [code for code in PYTHON if containing in code]
    assert len(found) == 1, containing
    return found[0]


def test_the_page_has_the_blocks_this_file_runs():
    assert (len(PYTHON), len(BASH)) == (3, 8)


def bash(script: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run ``script`` with the venv's python first on PATH; what it printed."""
    done = subprocess.run(
        ["bash", "-ec", script],
        cwd=cwd,
        env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, (script, done.stdout, done.stderr)
    return done.stdout


def on_port(code: str, port: int) -> str:
    return code.replace("localhost:8000", f"127.0.0.1:{port}")


# -- the curl session against examples/corpus.py ----------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    where = tmp_path_factory.mktemp("corpus-docs")
    # The secret the page's export line makes: the server signs webhooks with it.
    secret = bash(bash_block("export MFK_WEBHOOK_SECRET") + 'echo "$MFK_WEBHOOK_SECRET"', where)
    (serve,) = bash_block("mfk serve examples/corpus.py").split("#")[0].strip().splitlines()
    port = free_port()
    env = {"MFK_JOBS_DB": str(where / "jobs.sqlite3"), "MFK_WEBHOOK_SECRET": secret.strip()}
    args = serve.split()
    with running([str(BIN / args[0]), *args[1:], "--port", str(port)], env=env) as process:
        wait_ready(f"http://127.0.0.1:{port}", timeout=120)
        lines = [f"sentence number {i} of the corpus." for i in range(2000)]
        (where / "texts.txt").write_text("\n".join(lines) + "\n")
        yield port, where
    assert "Traceback" not in process.output, process.output


def test_submit_poll_collect_as_the_page_does_it(corpus):
    port, where = corpus
    script = "\n".join(
        on_port(bash_block(marker), port)
        for marker in ("tee job.json", "jq -c '{state, progress}'", "while [")
    )
    printed = bash(script, where).splitlines()
    submitted = json.loads((where / "job.json").read_text())
    assert submitted["state"] in ("queued", "running")
    assert submitted["links"]["status"].endswith(f"/corpus/jobs/{submitted['id']}")
    # The page's sample answer is a real one's shape.
    sample = json.loads(SAMPLE)
    assert sorted(sample) == sorted(submitted) and sorted(sample["links"]) == [
        "cancel",
        "result",
        "status",
    ]
    JobStatus.model_validate(sample)
    status = json.loads(printed[-2])
    assert sorted(status) == ["progress", "state"] and status["state"] in ("queued", "running")
    # The comment after the python line is what it prints.
    python_line = bash_block("while [").strip().splitlines()[-1]
    assert printed[-1] == python_line.split("#")[1].strip() == "(2000, 384)"
    assert (
        httpx.get(
            submitted["links"]["status"].replace("localhost:8000", f"127.0.0.1:{port}")
        ).json()["state"]
        == "succeeded"
    )


def test_cancel_as_the_page_does_it(corpus):
    port, where = corpus
    job = httpx.post(
        f"http://127.0.0.1:{port}/corpus/jobs",
        files={"corpus": ("texts.txt", (where / "texts.txt").read_bytes(), "text/plain")},
        timeout=30,
    ).json()
    printed = bash(f"JOB={job['id']}\n" + on_port(bash_block("/cancel"), port), where)
    assert printed.strip() == "canceled"
    answer = httpx.get(f"http://127.0.0.1:{port}/corpus/jobs/{job['id']}/result", timeout=30)
    assert (answer.status_code, answer.json()["code"]) == (409, "job_canceled")


def test_the_idempotency_key_answers_the_same_job_and_refuses_another_body(corpus):
    port, where = corpus
    script = on_port(bash_block("Idempotency-Key:"), port)
    first, again = bash(script, where).strip(), bash(script, where).strip()
    assert first.startswith("job-") and again == first
    (where / "other").mkdir(exist_ok=True)
    (where / "other" / "texts.txt").write_text("another corpus\n")
    assert bash(script, where / "other").strip() == "null"  # no job: an error body
    key = re.search(r"Idempotency-Key: ([^']+)'", script)
    assert key is not None
    refused = httpx.post(
        f"http://127.0.0.1:{port}/corpus/jobs",
        headers={"idempotency-key": key[1]},
        files={"corpus": ("texts.txt", b"another corpus\n", "text/plain")},
        timeout=30,
    )
    assert (refused.status_code, refused.json()["code"]) == (422, "idempotency_key_reused")


def test_a_webhook_to_a_private_address_is_refused_at_submission(corpus):
    port, where = corpus
    script = on_port(bash_block("Webhook-URL:"), port)
    assert "https://hooks.example.com/jobs" in script
    # No name resolves here; an address on this machine is refused for what it is.
    script = script.replace("https://hooks.example.com/jobs", "https://127.0.0.1:9/jobs")
    answer = json.loads(bash(script, where))
    assert answer["code"] == "webhook_refused" and "allow_private_webhooks" in answer["detail"]


# -- the page's service, its client and its webhook receiver ----------------------------------


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, str]]:
    where = tmp_path_factory.mktemp("pages-docs")
    code = python_block("class PageCounter")
    # Webhooks to the receiver on 127.0.0.1 need the option the page names for tests.
    code = code.replace("max_pending=100)", "max_pending=100, allow_private_webhooks=True)")
    assert "allow_private_webhooks=True" in code
    (where / "pages.py").write_text(code)
    secret = bash(bash_block("export MFK_WEBHOOK_SECRET") + 'echo "$MFK_WEBHOOK_SECRET"', where)
    port = free_port()
    env = {"MFK_JOBS_DB": str(where / "jobs.sqlite3"), "MFK_WEBHOOK_SECRET": secret.strip()}
    args = [str(BIN / "mfk"), "serve", "pages.py", "--port", str(port)]
    with running(args, cwd=where, env=env) as process:
        wait_ready(f"http://127.0.0.1:{port}", timeout=60)
        yield f"http://127.0.0.1:{port}", where, secret.strip()
    assert "Traceback" not in process.output, process.output


@contextlib.contextmanager
def importable(where: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.syspath_prepend(str(where))
    try:
        yield
    finally:
        sys.modules.pop("pages", None)


def test_the_typed_client_block_submits_and_collects(pages, monkeypatch):
    base, where, _ = pages
    code = python_block("PageCounter.client").replace("http://127.0.0.1:8000", base)
    printed = io.StringIO()
    with importable(where, monkeypatch), contextlib.redirect_stdout(printed):
        exec(compile(code, "jobs.md", "exec"), {})
    first, words, progress = printed.getvalue().splitlines()
    job_id, state = first.split()
    assert job_id.startswith("job-") and state in ("queued", "running", "succeeded")
    assert words == code.split("# ")[1].splitlines()[0] == "[3, 2, 1]"
    assert progress == "fraction=1.0 message='3 of 3 pages'"


def test_progress_moves_and_a_canceled_job_has_no_result(pages, monkeypatch):
    base, where, _ = pages
    with importable(where, monkeypatch):
        from pages import PageCounter, PagesIn

        with PageCounter.client(base) as client:
            job = client.submit(PagesIn(pages=["word"] * 100))  # 20 s of work
            deadline = time.monotonic() + 60
            while (status := job.status()).progress is None:
                assert time.monotonic() < deadline, status
                time.sleep(0.05)
            assert status.state == "running" and 0 < status.progress.fraction < 1
            assert status.progress.message.endswith(" of 100 pages")
            assert job.cancel().state == "canceled"
            with pytest.raises(Exception) as caught:
                job.result(timeout=30)
            assert caught.value.code == "job_canceled" and caught.value.status_code == 409


def test_the_receiver_block_verifies_a_real_webhook(pages, monkeypatch):
    base, where, secret = pages
    monkeypatch.setenv("MFK_WEBHOOK_SECRET", secret)
    namespace: dict[str, object] = {}
    exec(compile(python_block("verify_webhook("), "jobs.md", "exec"), namespace)
    ended = namespace["ended"]
    assert ended == {}
    with ThreadedServer(namespace["app"]) as receiver, importable(where, monkeypatch):
        from pages import PageCounter, PagesIn

        with PageCounter.client(base) as client:
            job = client.submit(PagesIn(pages=["a b"]), webhook=f"{receiver.url}/hooks/jobs")
            assert job.result(timeout=60).words == [2]
            deadline = time.monotonic() + 30
            while job.id not in ended:  # type: ignore[operator]
                assert time.monotonic() < deadline, job.status()
                time.sleep(0.05)
            assert ended == {job.id: "succeeded"}
            while (hook := job.status().webhook) is not None and hook.state == "pending":
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert hook is not None and (hook.state, hook.last_status) == ("delivered", 204)
        # A call signed with another secret is refused by the receiver.
        forged = httpx.post(
            f"{receiver.url}/hooks/jobs",
            content=b'{"type": "job.succeeded"}',
            headers={
                "webhook-id": "x",
                "webhook-timestamp": str(int(time.time())),
                "webhook-signature": "v1,bm90IGEgc2lnbmF0dXJl",
            },
        )
        assert forged.status_code == 400
