"""Streams that join a running batch: the kit's step loop over ``join`` / ``step`` / ``leave``
(``StepLoop`` behind a ``JoiningBatcher``), driven through the in-process backend."""

from __future__ import annotations

import asyncio
import sys
import threading
import types
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from modal_fastapi_kit import END, InputError, ModelServer, gpu_service
from modal_fastapi_kit._backends.local import LocalBackend
from modal_fastapi_kit._core.batcher import JoiningBatcher
from modal_fastapi_kit._core.spec import PredictHook, service_spec
from modal_fastapi_kit._core.state import LoadState
from modal_fastapi_kit._core.streams import ItemStream
from modal_fastapi_kit.exceptions import (
    ConfigError,
    DeadlineExceeded,
    ModelStalled,
    NotReadyError,
    PredictError,
)

from .._toys import NumIn, NumOut

pytestmark = pytest.mark.timeout(60)

GATE = threading.Event()  # a step for an item with x == HOLD waits here
HOLD = 7777


class Counting(ModelServer[NumIn, NumOut]):
    """Item ``x`` streams ``x`` chunks, one per step (its key * 1000 + the chunk's number),
    then ``END``; ``x < 0`` is refused by ``join``; ``x == 13`` fails in its third step;
    ``x == 666`` makes a whole step raise, ``x == 555`` run out of GPU memory; ``x == HOLD``
    holds its steps at ``GATE``. Records every call."""

    log: ClassVar[list[tuple[str, object]]] = []

    def load(self) -> None:
        self.left: dict[int, int] = {}  # key -> chunks still to send
        self.sent: dict[int, int] = {}
        self.wanted: dict[int, int] = {}

    def join(self, items: dict[int, NumIn]) -> dict[int, Any]:
        type(self).log.append(("join", sorted(items)))
        answers: dict[int, Any] = {}
        for key, item in items.items():
            if item.x < 0:
                answers[key] = InputError(f"x={item.x} is negative")
                continue
            self.left[key], self.sent[key], self.wanted[key] = item.x, 0, item.x
        return answers

    def step(self) -> dict[int, Any]:
        type(self).log.append(("step", sorted(self.left)))
        if any(self.wanted[k] == HOLD for k in self.left):
            GATE.wait(10)
        if any(self.wanted[k] == 666 for k in self.left):
            raise RuntimeError("secret: the whole step failed")
        if any(self.wanted[k] == 555 for k in self.left):
            raise sys.modules["torch"].OutOfMemoryError("CUDA out of memory")
        answers: dict[int, Any] = {}
        for key in list(self.left):
            if self.wanted[key] == 13 and self.sent[key] == 2:
                answers[key] = ValueError("secret: this item failed")
            elif self.left[key] == 0:
                answers[key] = END
            else:
                answers[key] = NumOut(y=key * 1000 + self.sent[key])
                self.left[key] -= 1
                self.sent[key] += 1
        return answers

    def leave(self, keys: list[int]) -> None:
        type(self).log.append(("leave", sorted(keys)))
        for key in keys:
            self.left.pop(key, None)

    @classmethod
    def steps(cls) -> list[list[int]]:
        return [keys for call, keys in cls.log if call == "step"]  # type: ignore[misc]

    @classmethod
    def left_keys(cls) -> list[int]:
        return [key for call, keys in cls.log if call == "leave" for key in keys]  # type: ignore[attr-defined]


@gpu_service(name="counting", max_batch_size=4, stall_timeout=0.5)
class Four(Counting):
    pass


@gpu_service(name="counting-one", max_batch_size=1)
class One(Counting):
    pass


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    Counting.log = []
    GATE.set()
    yield
    GATE.set()


async def serving(server_cls: type) -> LocalBackend:
    backend = LocalBackend(service_spec(server_cls))
    await backend.start()
    for _ in range(500):
        if backend.state is LoadState.READY:
            return backend
        await asyncio.sleep(0.01)
    raise AssertionError(f"{server_cls.__name__} did not load: {backend.error}")


async def open_stream(backend: LocalBackend, x: int, timeout: float = 10) -> ItemStream:
    loop = asyncio.get_running_loop()
    stream = await backend.submit(NumIn(x=x), deadline=loop.time() + timeout)
    assert isinstance(stream, ItemStream)
    return stream


async def drain(stream: ItemStream) -> list[int]:
    got = []
    while True:
        try:
            got.append((await stream.next(5)).y)
        except StopAsyncIteration:
            return got


async def until(predicate: Any, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.005)):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


def test_join_step_and_leave_make_the_joining_form_and_its_mistakes_are_refused():
    hook = service_spec(Four).predict
    assert (hook.name, hook.joining, hook.streaming, hook.asynchronous) == (
        "step",
        True,
        True,
        False,
    )
    assert service_spec(Four).hook_label == "Four.step"

    class NoLeave(ModelServer[NumIn, NumOut]):
        def join(self, items: dict[int, NumIn]) -> None: ...
        def step(self) -> dict[int, Any]: ...

    with pytest.raises(
        ConfigError, match=r"NoLeave defines step but not leave: .*leave\(self, keys\)"
    ):
        gpu_service()(NoLeave)

    class Mixed(Counting):
        async def step(self) -> dict[int, Any]:  # type: ignore[override]
            return {}

    with pytest.raises(ConfigError, match="join, leave are sync: make them 'async def' too"):
        PredictHook.of(Mixed)

    class Generating(Counting):
        def step(self) -> Iterator[dict[int, Any]]:  # type: ignore[override]
            yield {}

    with pytest.raises(ConfigError, match=r"Generating.step is a generator"):
        PredictHook.of(Generating)


async def test_an_item_joins_the_running_batch_at_the_next_step_and_leaves_when_done():
    backend = await serving(Four)
    long = await open_stream(backend, 60)
    assert (await long.next(5)).y == 0
    short = await open_stream(backend, 3)
    assert await drain(short) == [1000, 1001, 1002]
    assert not long.finished  # the newcomer did not wait for the running stream to end
    assert await drain(long) == list(range(1, 60))
    steps = Counting.steps()
    assert [0, 1] in steps  # they shared steps
    assert steps.index([0, 1]) < len(steps) - 50  # the newcomer joined early
    await until(lambda: Counting.left_keys() == [1, 0])  # each left once, when it ended
    await backend.stop()


async def test_the_batch_never_holds_more_than_max_batch_size_and_a_slot_is_reused_at_once():
    backend = await serving(Four)
    streams = await asyncio.gather(*(open_stream(backend, 20 + i) for i in range(10)))
    answers = await asyncio.gather(*(drain(s) for s in streams))
    assert [len(a) for a in answers] == [20 + i for i in range(10)]
    assert max(len(keys) for keys in Counting.steps()) == 4
    assert all(len(keys) == 4 for keys in Counting.steps()[:5])  # full until the queue empties
    await backend.stop()


async def test_a_client_that_leaves_frees_its_slot_for_the_next_in_the_queue():
    backend = await serving(One)
    first = await open_stream(backend, 1_000_000)
    assert (await first.next(5)).y == 0
    waiting = asyncio.ensure_future(open_stream(backend, 2))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # the one slot is taken
    first.close()
    second = await asyncio.wait_for(waiting, 5)
    assert await drain(second) == [1000, 1001]
    await until(lambda: Counting.left_keys() == [0, 1])
    assert all(len(keys) == 1 for keys in Counting.steps())
    await backend.stop()


async def test_an_item_that_fails_fails_alone_and_a_refused_one_never_takes_a_step():
    backend = await serving(Four)
    good, bad, refused = await asyncio.gather(
        open_stream(backend, 5), open_stream(backend, 13), open_stream(backend, -1)
    )
    with pytest.raises(InputError, match="x=-1 is negative"):
        await refused.next(5)
    assert [(await bad.next(5)).y for _ in range(2)] == [1000, 1001]
    with pytest.raises(PredictError, match=r"Four\.step raised ValueError"):
        await bad.next(5)
    assert await drain(good) == [0, 1, 2, 3, 4]
    await until(lambda: sorted(Counting.left_keys()) == [0, 1, 2])
    assert all(2 not in keys for keys in Counting.steps())
    await backend.stop()


async def test_a_step_that_raises_fails_the_items_in_it_and_the_loop_goes_on():
    backend = await serving(Four)
    one, two = await asyncio.gather(open_stream(backend, 50), open_stream(backend, 666))
    for stream in (one, two):
        with pytest.raises(PredictError, match=r"Four\.step raised RuntimeError"):
            await drain(stream)
    await until(lambda: sorted(Counting.left_keys()) == [0, 1])
    assert await drain(await open_stream(backend, 2)) == [2000, 2001]
    await backend.stop()


async def test_a_step_out_of_gpu_memory_fails_its_items_and_halves_the_cap(monkeypatch):
    torch = types.ModuleType("torch")
    torch.OutOfMemoryError = type("OutOfMemoryError", (RuntimeError,), {})  # type: ignore[attr-defined]
    torch.cuda = types.SimpleNamespace(is_available=lambda: False)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", torch)
    backend = await serving(Four)
    streams = await asyncio.gather(*(open_stream(backend, x) for x in (30, 30, 30, 555)))
    for stream in streams:
        with pytest.raises(PredictError, match="OutOfMemoryError"):
            await drain(stream)
    assert backend.batcher is not None and backend.batcher.max_batch_size == 2
    more = await asyncio.gather(*(open_stream(backend, 3) for _ in range(4)))
    assert await asyncio.gather(*(drain(s) for s in more)) == [
        [k * 1000, k * 1000 + 1, k * 1000 + 2] for k in range(4, 8)
    ]
    assert max(len(keys) for keys in Counting.steps()[1:]) == 2
    await backend.stop()


async def test_one_stream_at_a_time_is_said_when_serving_starts(caplog):
    backend = await serving(One)
    assert "with max_batch_size=1: one stream at a time" in caplog.text
    await backend.stop()


async def test_a_step_that_hangs_fails_its_items_and_the_queue_and_the_batch_serves_again():
    backend = await serving(Four)
    GATE.clear()
    held = await open_stream(backend, HOLD)
    with pytest.raises(ModelStalled, match=r"Four\.step has been running"):
        await held.next(5)
    with pytest.raises(ModelStalled):
        await open_stream(backend, 1)  # refused while the model is stuck
    GATE.set()
    await until(lambda: backend.runtime.stalled is None)
    assert await drain(await open_stream(backend, 2)) == [1000, 1001]
    await until(lambda: Counting.left_keys() == [0, 1])  # the stuck one, once it answered
    await backend.stop()


async def test_an_item_past_its_deadline_in_the_queue_never_joins():
    backend = await serving(One)
    first = await open_stream(backend, 1_000_000)
    loop = asyncio.get_running_loop()
    late = backend.submit(NumIn(x=1), deadline=loop.time() + 0.05)
    await asyncio.sleep(0.1)
    first.close()
    with pytest.raises(DeadlineExceeded, match="passed while it was queued"):
        await late
    assert [keys for call, keys in Counting.log if call == "join"] == [[0]]
    await backend.stop()


class Steps:
    """A recorder that keeps what the kit reports."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.waits: list[float] = []
        self.chunks = 0
        self.failures: list[tuple[str, int]] = []

    def batch(self, size: int, seconds: float) -> None:
        self.batches.append(size)

    def waited(self, seconds: float) -> None:
        self.waits.append(seconds)

    def withdrawn(self) -> None:
        pass

    def failed(self, error: str, count: int) -> None:
        self.failures.append((error, count))

    def chunk(self) -> None:
        self.chunks += 1

    def batch_cap(self, size: int) -> None:
        pass

    def loaded(self, phase: str, seconds: float) -> None:
        pass


async def test_each_step_reports_its_size_and_each_item_its_wait():
    backend = await serving(Four)
    recorder = backend.runtime.recorder = backend.recorder = Steps()
    assert isinstance(backend.batcher, JoiningBatcher)
    backend.batcher.recorder = recorder
    streams = await asyncio.gather(*(open_stream(backend, 3) for _ in range(2)))
    await asyncio.gather(*(drain(s) for s in streams))
    bad = await open_stream(backend, 13)
    with pytest.raises(PredictError):
        await drain(bad)
    assert recorder.batches == [2, 2, 2, 2, 1, 1, 1]  # the last step of the two: their END
    assert len(recorder.waits) == 3
    assert recorder.chunks == 2 * 3 + 2
    assert recorder.failures == [("PredictError", 1)]
    await backend.stop()


async def test_stop_lets_running_streams_finish_and_then_refuses():
    backend = await serving(Four)
    stream = await open_stream(backend, 30)
    stopping = asyncio.ensure_future(backend.stop())
    assert await drain(stream) == list(range(30))
    await asyncio.wait_for(stopping, 5)
    with pytest.raises(NotReadyError):
        await open_stream(backend, 1)


async def test_stop_past_its_bound_ends_the_running_streams_with_shutting_down():
    backend = await serving(Four)
    GATE.clear()
    stream = await open_stream(backend, HOLD)
    assert isinstance(backend.batcher, JoiningBatcher)
    await backend.batcher.stop(timeout=0.1)
    with pytest.raises(NotReadyError, match="shutting down"):
        await stream.next(5)
    GATE.set()
    await backend.stop()


@gpu_service(name="async-counting", max_batch_size=4)
class AsyncCounting(ModelServer[NumIn, NumOut]):
    threads: ClassVar[set[str]] = set()

    async def load(self) -> None:
        self.items: dict[int, int] = {}

    async def join(self, items: dict[int, NumIn]) -> None:
        type(self).threads.add(threading.current_thread().name)
        self.items.update({key: item.x for key, item in items.items()})

    async def step(self) -> dict[int, Any]:
        await asyncio.sleep(0)
        answers: dict[int, Any] = {}
        for key, left in self.items.items():
            answers[key] = END if left == 0 else NumOut(y=left)
            self.items[key] = left - 1
        return answers

    async def leave(self, keys: list[int]) -> None:
        for key in keys:
            del self.items[key]


async def test_async_hooks_run_on_the_event_loop():
    backend = await serving(AsyncCounting)
    streams = await asyncio.gather(*(open_stream(backend, 3) for _ in range(3)))
    assert await asyncio.gather(*(drain(s) for s in streams)) == [[3, 2, 1]] * 3
    assert AsyncCounting.threads == {threading.current_thread().name}
    await backend.stop()


@gpu_service(name="wrong-answers")
class WrongAnswers(Counting):
    def step(self) -> Any:
        return [NumOut(y=1)]


async def test_a_step_that_answers_no_mapping_fails_its_items_with_what_to_return():
    backend = await serving(WrongAnswers)
    stream = await open_stream(backend, 3)
    with pytest.raises(PredictError, match="returned list; return a dict from each item's key"):
        await stream.next(5)
    await backend.stop()


def test_a_step_helper_beside_predict_is_the_model_s_own_not_the_joining_form():
    @gpu_service(name="with-a-step-helper")
    class Diffuser(ModelServer[NumIn, NumOut]):
        def step(self, latents: int) -> int:  # one denoising step, called by predict
            return latents + 1

        def predict(self, item: NumIn) -> NumOut:
            return NumOut(y=self.step(item.x))

    hook = service_spec(Diffuser).predict
    assert (hook.name, hook.joining, hook.streaming) == ("predict", False, False)
