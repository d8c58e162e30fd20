"""``Watchdog`` with calls of their own bound (a job's ``run_timeout``) beside its default."""

from __future__ import annotations

import asyncio
import time

import pytest

from modal_fastapi_kit._core.thread import InferenceThread
from modal_fastapi_kit._core.watchdog import Watchdog
from modal_fastapi_kit.exceptions import ModelStalled


@pytest.mark.asyncio
async def test_a_sync_call_with_its_own_bound_outlives_the_default_one():
    thread = InferenceThread("t")
    dog = Watchdog("m.predict", thread, asynchronous=False)
    dog.start(0.2, "m", longest=5.0)
    try:
        assert await dog.call(time.sleep, 0.6, bound=5.0) is None
        assert dog.stalled is None
        with pytest.raises(ModelStalled, match=r"past stall_timeout=0.2s"):
            await dog.call(time.sleep, 0.6)
    finally:
        dog.stop()
        await asyncio.sleep(0.5)  # the stuck call returns
        thread.close()


@pytest.mark.asyncio
async def test_the_start_and_the_bound_of_a_call_are_read_together():
    # The thread publishes them as one value: a call's bound is never read with another's
    # start (a long job ending as a request's call begins would look stuck).
    thread = InferenceThread("t")
    dog = Watchdog("m.predict", thread, asynchronous=False)
    loop = asyncio.get_running_loop()
    thread.busy = (time.monotonic() - 1.0, 5.0)
    assert dog._overdue(loop, 0.2) is None
    thread.busy = (time.monotonic() - 1.0, None)
    overdue = dog._overdue(loop, 0.2)
    assert overdue is not None and overdue[1:] == (0.2, False)
    thread.busy = None
    assert thread.busy_since is None and dog._overdue(loop, 0.2) is None
