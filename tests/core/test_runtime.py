"""``ModelRuntime``: per-item outcomes, failure isolation, client errors, the stall watchdog,
generators, and one load at a time per process."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import ClassVar

import pytest
from pydantic import BaseModel

from modal_fastapi_kit import END, InputError, ModelServer, gpu_service
from modal_fastapi_kit._core.runtime import ModelRuntime
from modal_fastapi_kit._core.spec import service_spec
from modal_fastapi_kit._core.state import LoadState
from modal_fastapi_kit.exceptions import ModelStalled, PredictError

from .._toys import NumIn, NumOut

pytestmark = pytest.mark.timeout(60)


class Text(BaseModel):
    text: str


def items(*xs: int) -> list[NumIn]:
    return [NumIn(x=x) for x in xs]


async def started(server_cls: type, **kwargs: object) -> ModelRuntime:
    runtime = ModelRuntime(service_spec(server_cls), **kwargs)  # type: ignore[arg-type]
    await runtime.start()
    return runtime


def values(outcomes: list[object]) -> list[object]:
    return [o.y if isinstance(o, NumOut) else type(o).__name__ for o in outcomes]


# -- per-item outcomes ---------------------------------------------------------------------------


@gpu_service(name="picky", max_batch_size=64)
class Picky(ModelServer[NumIn, NumOut]):
    """Raises for the whole batch when it holds a negative number; counts its calls."""

    calls: ClassVar[list[int]] = []

    def predict_batch(self, batch: list[NumIn]) -> list[NumOut]:
        type(self).calls.append(len(batch))
        if any(i.x < 0 for i in batch):
            raise ValueError("negative input")
        return [NumOut(y=2 * i.x) for i in batch]


async def test_a_raising_batch_is_rerun_in_halves_so_only_the_bad_item_fails():
    Picky.calls = []
    runtime = await started(Picky)
    outcomes = await runtime.run_batch(items(*range(20), -1, *range(21, 32)))
    assert values(outcomes) == [2 * x for x in range(20)] + ["PredictError"] + [
        2 * x for x in range(21, 32)
    ]
    assert "Picky.predict_batch raised ValueError: negative input" in str(outcomes[20])
    # 1 whole run + halving down to one item: at most 2 calls per level, log2(32) = 5 levels.
    assert Picky.calls[0] == 32 and len(Picky.calls) <= 1 + 2 * 5
    await runtime.stop()


async def test_two_bad_items_are_both_found():
    Picky.calls = []
    runtime = await started(Picky)
    outcomes = await runtime.run_batch(items(-1, *range(1, 15), -2, 16))
    failed = [i for i, o in enumerate(outcomes) if isinstance(o, PredictError)]
    assert failed == [0, 15]
    await runtime.stop()


@gpu_service(name="broken", max_batch_size=64)
class Broken(ModelServer[NumIn, NumOut]):
    calls = 0

    def predict_batch(self, batch: list[NumIn]) -> list[NumOut]:
        type(self).calls += 1
        raise RuntimeError("CUDA error: device-side assert triggered")


async def test_a_model_that_fails_everything_is_recognised_early():
    Broken.calls = 0
    runtime = await started(Broken)
    outcomes = await runtime.run_batch(items(*range(64)))
    assert all(isinstance(o, PredictError) for o in outcomes)
    # The first run, halving down to one item (6 calls), then three more items alone.
    assert Broken.calls <= 1 + 6 + 4
    await runtime.stop()


@gpu_service(name="no-isolation", max_batch_size=8, isolate_failures=False)
class NoIsolation(Picky):
    pass


async def test_isolation_can_be_turned_off():
    Picky.calls = []
    runtime = await started(NoIsolation)
    outcomes = await runtime.run_batch(items(1, -1, 3))
    assert values(outcomes) == ["PredictError"] * 3
    assert Picky.calls == [3]
    await runtime.stop()


@gpu_service(name="slots", max_batch_size=8)
class Slots(ModelServer[NumIn, NumOut]):
    def predict_batch(self, batch: list[NumIn]) -> list[object]:
        answers: list[object] = []
        for item in batch:
            if item.x == 13:
                answers.append(InputError("13 is unlucky; send another number", status_code=400))
            elif item.x < 0:
                answers.append(ValueError("negative"))
            elif item.x == 99:
                answers.append({"z": 1})  # not a NumOut
            else:
                answers.append({"y": item.x})  # a dict becomes a NumOut
        return answers


async def test_an_exception_or_a_bad_value_in_a_slot_fails_that_item_alone():
    runtime = await started(Slots)
    outcomes = await runtime.run_batch(items(1, 13, -1, 99, 5))
    assert values(outcomes) == [1, "InputError", "PredictError", "PredictError", 5]
    assert outcomes[1].status_code == 400
    assert str(outcomes[1]) == "13 is unlucky; send another number"
    assert "returned a value that does not match NumOut" in str(outcomes[3])
    await runtime.stop()


@gpu_service(name="short")
class Short(ModelServer[NumIn, NumOut]):
    calls = 0

    def predict_batch(self, batch: list[NumIn]) -> list[NumOut]:
        type(self).calls += 1
        return []


async def test_a_wrong_result_count_fails_the_batch_without_reruns():
    Short.calls = 0
    runtime = await started(Short)
    outcomes = await runtime.run_batch(items(1, 2))
    assert all("returned 0 results for 2 items" in str(o) for o in outcomes)
    assert Short.calls == 1
    await runtime.stop()


@gpu_service(name="refuses")
class Refuses(ModelServer[NumIn, NumOut]):
    async def predict(self, item: NumIn) -> NumOut:
        if item.x > 100:
            raise InputError(f"x={item.x} is too large; the model takes at most 100")
        return NumOut(y=item.x)


async def test_input_error_from_predict_keeps_its_status_and_message():
    runtime = await started(Refuses)
    (outcome,) = await runtime.run_batch(items(101))
    assert isinstance(outcome, InputError)
    assert outcome.status_code == 422
    assert outcome.detail == "x=101 is too large; the model takes at most 100"
    await runtime.stop()


def test_input_error_refuses_a_status_that_is_not_a_client_error():
    with pytest.raises(ValueError, match=r"status_code=500.*4xx"):
        InputError("no", status_code=500)


# -- the stall watchdog --------------------------------------------------------------------------


class Gate:
    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()


GATE = Gate()


@gpu_service(name="hangs", max_batch_size=4, stall_timeout=0.5)
class Hangs(ModelServer[NumIn, NumOut]):
    def predict_batch(self, batch: list[NumIn]) -> list[NumOut]:
        if batch[0].x == 0:
            GATE.entered.set()
            GATE.release.wait(30)
        return [NumOut(y=i.x) for i in batch]


async def test_a_stuck_call_stalls_the_model_and_fails_its_waiters_then_it_recovers():
    global GATE
    GATE = Gate()
    stalls: list[ModelStalled] = []
    runtime = await started(Hangs, on_stall=stalls.append)
    loop = asyncio.get_running_loop()
    began = loop.time()
    stuck = await runtime.run_batch(items(0, 1))
    waited = loop.time() - began
    assert [type(o) for o in stuck] == [ModelStalled, ModelStalled]
    assert 0.5 <= waited < 3.0, waited
    assert "past stall_timeout=0.5s" in str(stuck[0])
    assert runtime.stalled is not None and len(stalls) == 1
    assert not await runtime.healthy()
    # While stuck, nothing else reaches the model.
    assert [type(o) for o in await runtime.run_batch(items(5))] == [ModelStalled]
    GATE.release.set()
    for _ in range(300):
        if runtime.stalled is None:
            break
        await asyncio.sleep(0.01)
    assert runtime.stalled is None
    assert values(await runtime.run_batch(items(7))) == [7]
    assert await runtime.healthy()
    await runtime.stop()


@gpu_service(name="hangs-async", stall_timeout=0.3)
class HangsAsync(ModelServer[NumIn, NumOut]):
    cancelled = False

    async def predict(self, item: NumIn) -> NumOut:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            type(self).cancelled = True
            raise
        return NumOut(y=0)


async def test_a_stuck_async_call_is_cancelled():
    HangsAsync.cancelled = False
    runtime = await started(HangsAsync)
    (outcome,) = await runtime.run_batch(items(1))
    assert isinstance(outcome, ModelStalled)
    await asyncio.sleep(0.05)
    assert HangsAsync.cancelled
    await runtime.stop()


# -- generators ------------------------------------------------------------------------------


class Closed:
    def __init__(self) -> None:
        self.events: list[str] = []


CLOSED = Closed()


@gpu_service(name="counter")
class Counter(ModelServer[NumIn, NumOut]):
    def predict(self, item: NumIn) -> Iterator[NumOut]:
        try:
            for i in range(item.x):
                if i == 3 and item.x == 99:
                    raise ValueError("broke after three")
                yield NumOut(y=i)
        except GeneratorExit:
            CLOSED.events.append(f"closed on {threading.current_thread().name}")
            raise


async def drain(stream, timeout: float = 5) -> list[int]:
    got = []
    while True:
        try:
            got.append((await stream.next(timeout)).y)
        except StopAsyncIteration:
            return got


async def test_a_sync_generator_streams_its_chunks_on_the_inference_thread():
    runtime = await started(Counter)
    assert runtime.spec.streaming
    batch = runtime.open_streams(items(4))
    assert await drain(batch.streams[0]) == [0, 1, 2, 3]
    await batch.done
    await runtime.stop()


async def test_a_failure_after_chunks_ends_the_stream_with_the_error():
    runtime = await started(Counter)
    stream = runtime.open_streams(items(99)).streams[0]
    assert [(await stream.next(5)).y for _ in range(3)] == [0, 1, 2]
    with pytest.raises(PredictError, match="broke after three"):
        await stream.next(5)
    await runtime.stop()


async def test_closing_a_stream_closes_its_generator_on_the_inference_thread():
    CLOSED.events.clear()
    runtime = await started(Counter)
    batch = runtime.open_streams(items(1_000_000))
    stream = batch.streams[0]
    assert (await stream.next(5)).y == 0
    stream.close()
    await asyncio.wait_for(batch.done, 5)
    assert CLOSED.events == ["closed on mfk-inference[Counter]"]
    await runtime.stop()


@gpu_service(name="async-counter")
class AsyncCounter(ModelServer[NumIn, NumOut]):
    closed = False

    async def predict(self, item: NumIn) -> AsyncIterator[NumOut]:
        try:
            for i in range(item.x):
                await asyncio.sleep(0)
                yield NumOut(y=i)
        finally:
            type(self).closed = True


async def test_an_async_generator_streams_and_is_closed_when_its_reader_leaves():
    AsyncCounter.closed = False
    runtime = await started(AsyncCounter)
    assert await drain(runtime.open_streams(items(3)).streams[0]) == [0, 1, 2]
    batch = runtime.open_streams(items(10_000_000))
    assert (await batch.streams[0].next(5)).y == 0
    batch.streams[0].close()
    await asyncio.wait_for(batch.done, 5)
    assert AsyncCounter.closed
    await runtime.stop()


@gpu_service(name="lockstep", max_batch_size=4)
class Lockstep(ModelServer[NumIn, NumOut]):
    """Item i streams i chunks; per step: a chunk, None (nothing) or END (done)."""

    steps = 0

    def predict_batch(self, batch: list[NumIn]) -> Iterator[list[NumOut | object | None]]:
        for step in range(max(i.x for i in batch) + 1):
            type(self).steps += 1
            row: list[NumOut | object | None] = []
            for item in batch:
                if item.x < 0:
                    row.append(ValueError("negative") if step == 0 else None)
                elif step < item.x:
                    row.append(NumOut(y=10 * item.x + step) if step % 2 == 0 else None)
                else:
                    row.append(END)
            yield row


async def test_a_batched_generator_shares_steps_and_each_item_ends_on_its_own():
    Lockstep.steps = 0
    runtime = await started(Lockstep)
    batch = runtime.open_streams(items(1, 4, -1))
    first, second, bad = batch.streams
    assert await drain(first) == [10]
    assert first.finished  # ended at its END, before the others
    with pytest.raises(PredictError, match="negative"):
        await bad.next(5)
    assert await drain(second) == [40, 42]
    await batch.done
    assert Lockstep.steps == 5  # one generator step per model step, for all three items
    await runtime.stop()


@gpu_service(name="bad-rows", max_batch_size=4)
class BadRows(ModelServer[NumIn, NumOut]):
    def predict_batch(self, batch: list[NumIn]) -> Iterator[list[NumOut]]:
        yield [NumOut(y=1)]  # one chunk for a batch of two


async def test_a_batched_generator_row_of_the_wrong_length_fails_every_stream():
    runtime = await started(BadRows)
    batch = runtime.open_streams(items(1, 2))
    for stream in batch.streams:
        with pytest.raises(PredictError, match=r"one chunk .* per item"):
            await stream.next(5)
    await runtime.stop()


# -- loading ---------------------------------------------------------------------------------


LOADING = {"now": 0, "most": 0}


@gpu_service(name="slow-load-a")
class SlowLoadA(ModelServer[NumIn, NumOut]):
    def load(self) -> None:
        LOADING["now"] += 1
        LOADING["most"] = max(LOADING["most"], LOADING["now"])
        time.sleep(0.2)
        LOADING["now"] -= 1

    def predict(self, item: NumIn) -> NumOut:
        return NumOut(y=item.x)


@gpu_service(name="slow-load-b")
class SlowLoadB(SlowLoadA):
    pass


async def test_two_services_in_one_process_load_one_after_the_other():
    LOADING.update(now=0, most=0)
    a = ModelRuntime(service_spec(SlowLoadA))
    b = ModelRuntime(service_spec(SlowLoadB))
    await asyncio.gather(a.start(), b.start())
    assert LOADING["most"] == 1
    assert a.state is b.state is LoadState.READY
    assert a.thread.name != b.thread.name  # each its own inference thread
    await asyncio.gather(a.stop(), b.stop())


@gpu_service(name="load-fails")
class LoadFails(ModelServer[NumIn, NumOut]):
    def load(self) -> None:
        raise FileNotFoundError("weights.safetensors")

    def predict(self, item: NumIn) -> NumOut:
        return NumOut(y=item.x)


async def test_a_failed_load_says_why_and_leaves_the_turn_to_the_next_service():
    failing = ModelRuntime(service_spec(LoadFails))
    with pytest.raises(FileNotFoundError):
        await failing.start()
    assert failing.state is LoadState.FAILED
    assert failing.error == "LoadFails.load() raised FileNotFoundError: weights.safetensors"
    runtime = await started(SlowLoadA)
    assert runtime.state is LoadState.READY
    await runtime.stop()


@gpu_service(name="warmup-fails")
class WarmupFails(SlowLoadA):
    async def warmup(self) -> None:
        raise RuntimeError("CUDA out of memory")


async def test_a_failed_warmup_is_named_as_such():
    runtime = ModelRuntime(service_spec(WarmupFails))
    with pytest.raises(RuntimeError):
        await runtime.start()
    assert runtime.error == "WarmupFails.warmup() raised RuntimeError: CUDA out of memory"


# -- load phases ---------------------------------------------------------------------------------


@gpu_service(name="phased")
class Phased(ModelServer[NumIn, NumOut]):
    def load(self) -> None:
        time.sleep(0.05)

    async def warmup(self) -> None:
        await asyncio.sleep(0.02)

    def predict(self, item: NumIn) -> NumOut:
        return NumOut(y=item.x)


class Loads:
    """A recorder that keeps the load phases it is told."""

    def __init__(self) -> None:
        self.phases: list[tuple[str, float]] = []

    def loaded(self, phase: str, seconds: float) -> None:
        self.phases.append((phase, seconds))

    def __getattr__(self, name: str) -> object:
        return lambda *args: None


async def test_each_load_hook_s_seconds_are_kept_recorded_and_logged(caplog):
    heard = Loads()
    with caplog.at_level("INFO", logger="modal_fastapi_kit"):
        runtime = await started(Phased, recorder=heard)
    assert list(runtime.phase_seconds) == ["load", "to_device", "warmup"]
    assert runtime.phase_seconds["load"] >= 0.05 and runtime.phase_seconds["warmup"] >= 0.02
    assert sum(runtime.phase_seconds.values()) <= runtime.load_seconds  # type: ignore[operator]
    assert heard.phases == list(runtime.phase_seconds.items())
    (line,) = [r.getMessage() for r in caplog.records if "ready in" in r.getMessage()]
    assert re.fullmatch(
        r"Phased ready in \d+\.\ds \(load 0\.\ds, to_device 0\.0s, warmup 0\.0s\)", line
    ), line
    later = Loads()  # a recorder given after the load (the colocated container's) hears them too
    runtime.recorder = later
    assert later.phases == heard.phases
    await runtime.stop()


async def test_a_hook_run_again_after_a_snapshot_restore_adds_up():
    runtime = ModelRuntime(service_spec(Phased))
    await runtime.start(("load",), final=False)
    await runtime.start(("to_device", "warmup"))
    first = runtime.phase_seconds["load"]
    assert list(runtime.phase_seconds) == ["load", "to_device", "warmup"] and first >= 0.05
    await runtime.stop()
