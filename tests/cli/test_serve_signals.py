"""`mfk serve` ends on SIGTERM in bounded time, even with a model call that never returns."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import pytest

from .._servers import BIN, free_port, running, wait_ready

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def _serve_and_hang(target: str, *, wait_for_stall: bool) -> tuple[float, str, list[int]]:
    port = free_port()
    statuses: list[int] = []
    with running([str(BIN / "mfk"), "serve", target, "--port", str(port)]) as server:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)

        def post() -> None:
            statuses.append(httpx.post(f"{base}/stuck", json={"x": 1}, timeout=60).status_code)

        request = threading.Thread(target=post)
        request.start()
        if wait_for_stall:
            deadline = time.monotonic() + 10
            while httpx.get(f"{base}/healthz").status_code != 503:
                assert time.monotonic() < deadline, "the watchdog never flagged the hang"
                time.sleep(0.05)
        else:
            time.sleep(0.5)  # the request is on the model now
        started = time.monotonic()
        os.killpg(server.proc.pid, signal.SIGTERM)
        server.proc.wait(60)
        took = time.monotonic() - started
        request.join(10)
        return took, server.output, statuses


def test_sigterm_with_a_hung_predict_in_flight_ends_within_the_request_deadline():
    # request_timeout=2: the request is answered 504 at its deadline, the drain gives up on
    # the stuck batch after as long again, and the daemon inference thread does not hold
    # the interpreter.
    took, output, statuses = _serve_and_hang("tests/services/stuck.py:Stuck", wait_for_stall=False)
    assert took < 8.0, output
    assert statuses == [504]
    assert "not calling unload()" in output
    assert "Application shutdown complete" in output


def test_sigterm_after_the_watchdog_found_the_hang_ends_at_once():
    took, output, statuses = _serve_and_hang(
        "tests/services/stuck.py:StuckNoticed", wait_for_stall=True
    )
    assert statuses == [503]  # answered when the stall was found, not at request_timeout=20
    assert took < 3.0, output
    assert "past stall_timeout=1s" in output


def test_sigterm_drains_the_request_in_flight_then_exits_0():
    port = free_port()
    args = [str(BIN / "mfk"), "serve", "tests/services/stuck.py:Slow", "--port", str(port)]
    with running(args) as server:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)
        answers: list[httpx.Response] = []
        request = threading.Thread(
            target=lambda: answers.append(httpx.post(f"{base}/stuck", json={"x": 4}, timeout=30))
        )
        request.start()
        time.sleep(0.3)  # on the model now
        os.killpg(server.proc.pid, signal.SIGTERM)
        assert server.proc.wait(30) == 0, server.output
        request.join(10)
    assert answers[0].json() == {"y": 4}  # answered before the process ended


def test_it_runs_on_uvloop_and_logs_each_request_as_json():
    port = free_port()
    args = [str(BIN / "mfk"), "serve", "tests/services/loopy.py", "--port", str(port)]
    with running([*args, "--access-log", "--log-format", "json"]) as server:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)
        started = time.perf_counter()
        answer = httpx.post(f"{base}/loop", json={"x": 1}, headers={"x-request-id": "r-9"})
        waited_ms = 1000 * (time.perf_counter() - started)
        assert answer.json() == {"loop": "uvloop.Loop"}
        line = server.wait_for_line(r'"logger": "modal_fastapi_kit.access"', timeout=5)
    record = json.loads(line.string)
    assert record["method"] == "POST" and record["route"] == "/loop"
    assert record["status"] == 200 and record["request_id"] == "r-9"
    assert record["batch_size"] == 1
    # The time in the queue and on the model are measured (numbers, not null), in
    # milliseconds, and are parts of the request's time, itself part of what the client waited.
    queue_ms, model_ms, ms = record["queue_ms"], record["model_ms"], record["ms"]
    assert min(queue_ms, model_ms) >= 0
    # Each is rounded to 0.01 ms; the queue and model times are read from the event loop's
    # clock, which uvloop keeps in whole milliseconds, so each may be up to 1 ms over.
    assert queue_ms + model_ms <= ms + 2.02
    assert ms <= waited_ms + 0.02


def test_a_thousand_half_sent_requests_leave_healthz_answering():
    import resource
    import socket

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2400:
        pytest.skip(f"the hard open-file limit here is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2400), hard))  # this test's sockets

    def like_a_default_shell() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))  # mfk serve raises it

    port = free_port()
    args = [str(BIN / "mfk"), "serve", "tests/services/loopy.py", "--port", str(port)]
    held: list[socket.socket] = []
    with running(args, preexec=like_a_default_shell) as server:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)
        try:
            for _ in range(1100):
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                sock.sendall(b"POST /loop HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n")
                held.append(sock)
            for _ in range(5):
                assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
                assert httpx.post(f"{base}/loop", json={"x": 1}, timeout=5).status_code == 200
                time.sleep(0.2)
        finally:
            for sock in held:
                sock.close()
        assert len(server.output) < 20_000, server.output[-2000:]
