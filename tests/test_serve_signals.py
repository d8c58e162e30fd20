"""`mfk serve` ends on SIGTERM in bounded time, even with a model call that never returns."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest

from ._servers import BIN, free_port, running, wait_ready

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
