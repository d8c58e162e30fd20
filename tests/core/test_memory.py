"""A batch out of GPU memory is no item's fault: it runs in halves, the batch cap comes down and
the batcher keeps to it, and only an item that alone does not fit fails. A stand-in ``torch``
module for the runtime, then the real (CPU) PyTorch behind the served app."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import types
from typing import Any, ClassVar

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modal_fastapi_kit import ModelServer, gpu_service
from modal_fastapi_kit._core.batcher import Batcher
from modal_fastapi_kit._core.memory import BatchCap, free_cache, out_of_memory
from modal_fastapi_kit._core.runtime import ModelRuntime
from modal_fastapi_kit._core.spec import service_spec
from modal_fastapi_kit.exceptions import PredictError
from modal_fastapi_kit.testing import aserve

from .._toys import NumIn, NumOut

pytestmark = pytest.mark.timeout(60)

FIT = 4  # the most items the models below can take at once
FAT = 99  # an input that does not fit even alone


class StandIn:
    """A ``torch`` module as far as the kit looks at one: its OOM classes and the cache."""

    def __init__(self) -> None:
        self.module = types.ModuleType("torch")
        self.emptied = 0

        class OutOfMemoryError(RuntimeError):
            pass

        def empty_cache() -> None:
            self.emptied += 1

        self.module.OutOfMemoryError = OutOfMemoryError  # type: ignore[attr-defined]
        self.module.cuda = types.SimpleNamespace(  # type: ignore[attr-defined]
            OutOfMemoryError=OutOfMemoryError, is_available=lambda: True, empty_cache=empty_cache
        )

    @property
    def error(self) -> type[Exception]:
        return self.module.OutOfMemoryError  # type: ignore[no-any-return]


@pytest.fixture
def torch(monkeypatch: pytest.MonkeyPatch) -> StandIn:
    stand_in = StandIn()
    monkeypatch.setitem(sys.modules, "torch", stand_in.module)
    return stand_in


def test_out_of_memory_is_recognised_only_from_an_imported_torch(monkeypatch, torch):
    assert out_of_memory(torch.error("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not out_of_memory(RuntimeError("CUDA out of memory"))  # only the class says it
    monkeypatch.delitem(sys.modules, "torch")
    assert not out_of_memory(torch.error("CUDA out of memory"))
    free_cache()  # no torch: nothing to free, nothing raised
    assert torch.emptied == 0


def test_free_cache_empties_the_cuda_cache_only_when_cuda_is_there(torch):
    free_cache()
    assert torch.emptied == 1
    torch.module.cuda.is_available = lambda: False  # type: ignore[attr-defined]
    free_cache()
    assert torch.emptied == 1


def test_the_cap_only_comes_down_and_says_so_once_each_time(caplog):
    cap = BatchCap("Embedder.predict_batch", 16)
    heard: list[int] = []
    cap.add_listener(heard.append)
    with caplog.at_level(logging.WARNING, logger="modal_fastapi_kit"):
        cap.ran_out(16)
        cap.ran_out(16)  # a batch formed before the first came down: nothing changes
        cap.ran_out(5)
    assert cap.size == 3 and heard == [8, 3]
    assert [r.getMessage() for r in caplog.records] == [
        "Embedder.predict_batch ran out of GPU memory on a batch of 16; batches hold at most 8 "
        "items from now on",
        "Embedder.predict_batch ran out of GPU memory on a batch of 5; batches hold at most 3 "
        "items from now on",
    ]
    late: list[int] = []
    cap.add_listener(late.append)  # told at once where the cap already is
    assert late == [3]


def test_a_batcher_forms_no_batch_above_its_lowered_cap():
    async def run() -> list[int]:
        sizes: list[int] = []

        async def run_batch(items: list[int]) -> list[int]:
            sizes.append(len(items))
            await asyncio.sleep(0.01)
            return items

        batcher: Batcher[int] = Batcher(run_batch, max_batch_size=16, wait_ms=5, max_queue_size=99)
        batcher.start()
        batcher.lower_cap(3)
        deadline = asyncio.get_running_loop().time() + 10
        assert await asyncio.gather(*(batcher.submit(i, deadline=deadline) for i in range(20))) == [
            *range(20)
        ]
        await batcher.stop()
        return sizes

    sizes = asyncio.run(run())
    assert max(sizes) == 3 and sum(sizes) == 20


@gpu_service(name="tight", max_batch_size=16)
class Tight(ModelServer[NumIn, NumOut]):
    """Runs out of memory above FIT items, and on FAT at all; records the sizes it ran."""

    sizes: ClassVar[list[int]] = []

    def predict_batch(self, batch: list[NumIn]) -> list[NumOut]:
        type(self).sizes.append(len(batch))
        if len(batch) > FIT or any(item.x == FAT for item in batch):
            raise sys.modules["torch"].OutOfMemoryError("CUDA out of memory")
        return [NumOut(y=2 * item.x) for item in batch]


class Heard:
    """A recorder that keeps the batch caps it is told."""

    def __init__(self) -> None:
        self.caps: list[int] = []

    def batch_cap(self, size: int) -> None:
        self.caps.append(size)

    def __getattr__(self, name: str) -> Any:
        return lambda *args: None


async def test_a_batch_out_of_memory_is_answered_whole_and_lowers_the_cap(torch):
    Tight.sizes = []
    heard = Heard()
    runtime = ModelRuntime(service_spec(Tight), recorder=heard)  # type: ignore[arg-type]
    await runtime.start()
    outcomes = await runtime.run_batch([NumIn(x=x) for x in range(16)])
    assert [o.y for o in outcomes] == [2 * x for x in range(16)]  # type: ignore[union-attr]
    assert Tight.sizes == [16, 8, 4, 4, 8, 4, 4]
    assert runtime.batch_cap.size == 8 // 2 == FIT
    assert heard.caps == [16, FIT]  # the configured size at the start, then the lower one
    assert torch.emptied == 3  # after each call out of memory

    Tight.sizes = []  # a batch larger than the cap (the split topology's) is cut first
    outcomes = await runtime.run_batch([NumIn(x=x) for x in range(10)])
    assert [o.y for o in outcomes] == [2 * x for x in range(10)]  # type: ignore[union-attr]
    assert max(Tight.sizes) <= FIT and sum(Tight.sizes) == 10
    await runtime.stop()


async def test_an_item_that_alone_does_not_fit_fails_alone_and_leaves_the_cap(torch):
    Tight.sizes = []
    runtime = ModelRuntime(service_spec(Tight))
    await runtime.start()
    outcomes = await runtime.run_batch([NumIn(x=x) for x in (1, FAT, 3, 4)])
    assert isinstance(outcomes[1], PredictError) and outcomes[1].status_code == 500
    assert "OutOfMemoryError" in str(outcomes[1])
    assert [outcomes[i].y for i in (0, 2, 3)] == [2, 6, 8]  # type: ignore[union-attr]
    assert runtime.batch_cap.size == 16  # every piece that ran out held FAT
    await runtime.stop()


# -- the real (CPU) PyTorch, served ----------------------------------------------------------------


@gpu_service(name="roomy", route="/double", max_batch_size=16, wait_ms=5)
class Roomy(ModelServer[NumIn, NumOut]):
    """Raises PyTorch's own out-of-memory error above FIT items, and on FAT at all."""

    sizes: ClassVar[list[int]] = []

    def predict_batch(self, batch: list[NumIn]) -> list[NumOut]:
        import torch

        type(self).sizes.append(len(batch))
        time.sleep(0.002)  # long enough for batches to form under load
        if len(batch) > FIT or any(item.x == FAT for item in batch):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [NumOut(y=2 * item.x) for item in batch]


def value(text: str, name: str, **labels: str) -> float:
    (found,) = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    ]
    return found


@pytest.mark.e2e
async def test_served_with_torch_the_cap_comes_down_the_batcher_keeps_to_it_and_it_shows():
    pytest.importorskip("torch")
    Roomy.sizes = []
    async with aserve(Roomy) as client:
        before = (await client.get("/metrics")).text
        assert value(before, "mfk_batch_cap", service="roomy") == 16
        xs = [x for x in range(200) if x != FAT]

        async def post(x: int) -> httpx.Response:
            return await client.post("/double", json={"x": x})

        responses = await asyncio.gather(*(post(x) for x in xs))
        assert [r.json() for r in responses] == [{"y": 2 * x} for x in xs]
        text = (await client.get("/metrics")).text
        assert value(text, "mfk_batch_cap", service="roomy") == FIT
        batches = value(text, "mfk_batch_size_count", service="roomy")
        fitting = value(text, "mfk_batch_size_bucket", service="roomy", le="4.0")
        assert batches - fitting == 1  # the batch that ran out of memory; none above 4 after it

        responses = await asyncio.gather(*(post(x) for x in (1, 2, FAT, 3, 5, 6, 7, 8)))
        assert [r.status_code for r in responses] == [200, 200, 500, 200, 200, 200, 200, 200]
        assert responses[2].json()["code"] == "predict_failed"
        after = (await client.get("/metrics")).text
        assert value(after, "mfk_batch_cap", service="roomy") == FIT
