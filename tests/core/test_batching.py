"""The dynamic batcher: order, sizes, the wait, the bound, withdrawn and expired items."""

from __future__ import annotations

import asyncio
import threading

import pytest

from modal_fastapi_kit._core.batcher import Batcher
from modal_fastapi_kit.exceptions import (
    DeadlineExceeded,
    NotReadyError,
    PredictError,
    QueueFullError,
)

FAR = 1e9  # a deadline that never passes


class Model:
    """Doubles numbers on a worker thread; records batches; a gate can hold a batch."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail: Exception | None = None

    async def __call__(self, items: list[int]) -> list[int]:
        return await asyncio.to_thread(self._run, items)

    def _run(self, items: list[int]) -> list[int]:
        self.gate.wait(10)
        self.batches.append(list(items))
        if self.fail is not None:
            raise self.fail
        return [2 * x for x in items]


def make(model: Model, **options: float) -> Batcher[int, int]:
    params = {"max_batch_size": 4, "wait_ms": 5.0, "max_queue_size": 64, **options}
    batcher: Batcher[int, int] = Batcher(model, **params)  # type: ignore[arg-type]
    batcher.start()
    return batcher


async def until(predicate, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.005)):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


async def test_results_go_to_the_right_callers_in_order():
    model = Model()
    batcher = make(model, max_batch_size=8)
    futures = [batcher.submit(x, deadline=FAR) for x in range(50)]
    assert await asyncio.gather(*futures) == [2 * x for x in range(50)]
    assert [x for batch in model.batches for x in batch] == list(range(50))
    await batcher.stop()


async def test_batches_form_while_busy_and_never_exceed_max():
    model = Model()
    model.gate.clear()
    batcher = make(model, max_batch_size=4)
    first = batcher.submit(0, deadline=FAR)  # idle model: goes alone, at once
    await until(lambda: batcher.queue_size == 0)
    rest = [batcher.submit(x, deadline=FAR) for x in range(1, 10)]
    model.gate.set()
    await asyncio.gather(first, *rest)
    assert model.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]
    await batcher.stop()


async def test_lone_request_on_idle_model_does_not_wait():
    model = Model()
    batcher = make(model, wait_ms=5_000)
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await batcher.submit(21, deadline=FAR) == 42
    assert loop.time() - start < 2.5  # far below the 5 s wait: it was dispatched at once
    await batcher.stop()


async def test_under_load_the_batch_waits_up_to_wait_ms_to_fill():
    model = Model()
    batcher = make(model, max_batch_size=8, wait_ms=2_000)
    # Establish load: three requests together make the next target three.
    model.gate.clear()
    warm = [batcher.submit(0, deadline=FAR)]
    await until(lambda: batcher.queue_size == 0)
    warm += [batcher.submit(x, deadline=FAR) for x in range(1, 4)]
    model.gate.set()
    await asyncio.gather(*warm)
    assert model.batches == [[0], [1, 2, 3]]
    # One arrives, then two more within the wait: they run as one batch.
    first = batcher.submit(10, deadline=FAR)
    await asyncio.sleep(0.05)
    assert len(model.batches) == 2, "the lone item should wait for the batch to fill"
    more = [batcher.submit(x, deadline=FAR) for x in (11, 12)]
    await asyncio.gather(first, *more)
    assert model.batches[2] == [10, 11, 12]
    await batcher.stop()


async def test_wait_ms_bounds_the_wait_for_a_batch_that_does_not_fill():
    model = Model()
    batcher = make(model, max_batch_size=8, wait_ms=300)
    model.gate.clear()
    warm = [batcher.submit(0, deadline=FAR)]
    await until(lambda: batcher.queue_size == 0)
    warm += [batcher.submit(x, deadline=FAR) for x in range(1, 5)]
    model.gate.set()
    await asyncio.gather(*warm)  # target is now four
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await batcher.submit(7, deadline=FAR) == 14
    waited = loop.time() - start
    assert 0.25 <= waited < 3.0, waited
    # After a lone batch the target is one again: the next request goes at once.
    start = loop.time()
    await batcher.submit(8, deadline=FAR)
    assert loop.time() - start < 0.25
    await batcher.stop()


async def test_queue_is_bounded():
    model = Model()
    model.gate.clear()
    batcher = make(model, max_batch_size=1, max_queue_size=2)
    running = batcher.submit(0, deadline=FAR)
    await until(lambda: batcher.queue_size == 0)
    queued = [batcher.submit(x, deadline=FAR) for x in (1, 2)]
    with pytest.raises(QueueFullError, match="queue is full"):
        batcher.submit(3, deadline=FAR)
    model.gate.set()
    assert await asyncio.gather(running, *queued) == [0, 2, 4]
    await batcher.stop()


async def test_withdrawn_items_are_not_computed():
    model = Model()
    model.gate.clear()
    batcher = make(model, max_batch_size=4)
    running = batcher.submit(0, deadline=FAR)
    await until(lambda: batcher.queue_size == 0)
    gone = batcher.submit(1, deadline=FAR)
    kept = batcher.submit(2, deadline=FAR)
    gone.cancel()  # what the router does when the client disconnects
    model.gate.set()
    assert await asyncio.gather(running, kept) == [0, 4]
    assert model.batches == [[0], [2]]
    await batcher.stop()


async def test_items_past_their_deadline_are_not_computed():
    model = Model()
    model.gate.clear()
    batcher = make(model, max_batch_size=4)
    loop = asyncio.get_running_loop()
    running = batcher.submit(0, deadline=FAR)
    await until(lambda: batcher.queue_size == 0)
    late = batcher.submit(1, deadline=loop.time() + 0.01)
    await asyncio.sleep(0.05)
    model.gate.set()
    with pytest.raises(DeadlineExceeded):
        await late
    await running
    assert model.batches == [[0]]
    await batcher.stop()


async def test_a_failing_batch_fails_its_items_and_the_batcher_keeps_going():
    model = Model()
    model.fail = RuntimeError("CUDA out of memory")
    batcher = make(model)
    with pytest.raises(PredictError) as info:
        await batcher.submit(1, deadline=FAR)
    assert isinstance(info.value.__cause__, RuntimeError)
    model.fail = None
    assert await batcher.submit(2, deadline=FAR) == 4
    await batcher.stop()


async def test_wrong_number_of_results_is_an_error():
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    batcher: Batcher[int, int] = Batcher(short, max_batch_size=1, wait_ms=0, max_queue_size=8)
    batcher.start()
    with pytest.raises(PredictError, match="returned 0 results for 1 items"):
        await batcher.submit(1, deadline=FAR)
    await batcher.stop()


async def test_stop_drains_queued_work_then_refuses_new_items():
    model = Model()
    model.gate.clear()
    batcher = make(model, max_batch_size=2)
    futures = [batcher.submit(x, deadline=FAR) for x in range(5)]
    stopping = asyncio.ensure_future(batcher.stop())
    await asyncio.sleep(0.01)
    with pytest.raises(NotReadyError, match="shutting down"):
        batcher.submit(9, deadline=FAR)
    model.gate.set()
    await stopping
    assert [f.result() for f in futures] == [0, 2, 4, 6, 8]


async def test_async_model_may_run_several_batches_at_once():
    active = 0
    peak = 0

    async def model(items: list[int]) -> list[int]:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.05)
        active -= 1
        return items

    batcher: Batcher[int, int] = Batcher(
        model, max_batch_size=1, wait_ms=0, max_queue_size=16, max_in_flight=3
    )
    batcher.start()
    await asyncio.gather(*(batcher.submit(x, deadline=FAR) for x in range(6)))
    assert peak == 3
    await batcher.stop()


async def test_the_next_batch_starts_before_the_finished_one_is_answered():
    events: list[tuple[str, object]] = []
    model = Model()
    model.gate.clear()

    async def recording(items: list[int]) -> list[int]:
        events.append(("start", list(items)))
        return await model(items)

    batcher: Batcher[int, int] = Batcher(recording, max_batch_size=4, wait_ms=0, max_queue_size=8)
    batcher.start()
    first = batcher.submit(1, deadline=FAR)
    await until(lambda: batcher.queue_size == 0)
    second = batcher.submit(2, deadline=FAR)
    first.add_done_callback(lambda f: events.append(("answer", f.result())))
    model.gate.set()
    await asyncio.gather(first, second)
    assert events.index(("start", [2])) < events.index(("answer", 2)), events
    await batcher.stop()
