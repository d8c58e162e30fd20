"""Finding the failing items of a batch that raised: the search alone (a fake call function
counts its calls), then a served model with a tenth of its inputs bad, under concurrent load."""

from __future__ import annotations

import asyncio
import math
import random
import time
import zlib
from collections.abc import Callable, Sequence

import httpx
import pytest
from pydantic import BaseModel

from modal_fastapi_kit import ModelServer, gpu_service
from modal_fastapi_kit._core.isolation import BROKEN_AFTER, Blame, Failure, Settled, settle
from modal_fastapi_kit.testing import aserve

pytestmark = pytest.mark.timeout(60)


class Model:
    """A batch call that raises when its piece holds a bad item; counts its calls."""

    def __init__(self, bad: Callable[[int], bool], say: Callable[[int], str] = str) -> None:
        self.bad = bad
        self.say = say
        self.sizes: list[int] = []

    async def __call__(self, piece: list[int]) -> list[int]:
        self.sizes.append(len(piece))
        for item in piece:
            if self.bad(item):
                raise ValueError(f"cannot read {self.say(item)}")
        return [10 * item for item in piece]


def failed(settled: Settled[int]) -> set[int]:
    return {i for i, o in enumerate(settled.outcomes) if isinstance(o, Failure)}


def check(settled: Settled[int], bad: set[int]) -> None:
    assert failed(settled) == bad
    for i, outcome in enumerate(settled.outcomes):
        if i in bad:
            assert isinstance(outcome, Failure)
            assert str(outcome.error) == f"cannot read {i}"  # its own error, found alone
        else:
            assert outcome == 10 * i


# -- the search ----------------------------------------------------------------------------------


async def test_a_batch_that_succeeds_is_one_call():
    model = Model(lambda i: False)
    settled = await settle(list(range(16)), model)
    assert settled.outcomes == [10 * i for i in range(16)]
    assert model.sizes == [16] and settled.calls == 1


@pytest.mark.parametrize("n", [1, 2, 3, 5, 16, 32, 64])
async def test_every_item_failing_costs_at_most_one_call_per_piece_of_the_halving_tree(n):
    # Each item says something else, so the model does not look broken: the search goes on
    # to the end.
    model = Model(lambda i: True)
    settled = await settle(list(range(n)), model)
    check(settled, set(range(n)))
    assert settled.calls == len(model.sizes) <= 2 * n - 1
    assert not settled.broken


async def test_k_bad_items_of_n_are_found_exactly_for_many_random_patterns():
    rng = random.Random(20240611)
    for n in (2, 7, 16, 32, 64):
        for _ in range(60):
            bad = set(rng.sample(range(n), rng.randint(0, n)))
            model = Model(bad.__contains__)
            settled = await settle(list(range(n)), model)
            check(settled, bad)
            assert settled.calls <= 2 * n - 1


@pytest.mark.parametrize(
    ("k", "most"),
    # Re-runs after the first call, one batch of 16, every pattern of k bad items tried at
    # random; the means are about 6.5, 11 and 17.
    [(1, 8), (2, 14), (4, 22)],
)
async def test_a_few_bad_items_cost_a_few_calls_each(k, most):
    rng = random.Random(k)
    for _ in range(200):
        bad = set(rng.sample(range(16), k))
        settled = await settle(list(range(16)), Model(bad.__contains__))
        check(settled, bad)
        assert settled.calls - 1 <= most


async def test_one_bad_item_costs_about_one_and_a_half_calls_per_halving():
    calls = []
    for bad in range(32):
        settled = await settle(list(range(32)), Model(lambda i, bad=bad: i == bad))
        calls.append(settled.calls - 1)
    assert max(calls) <= 2 * 5  # two per level of halving at the most
    assert sum(calls) / len(calls) <= 1.6 * 5


@pytest.mark.parametrize("n", [16, 32, 64])
async def test_a_model_that_fails_everything_is_recognised_after_a_few_lone_items(n):
    model = Model(lambda i: True, say=lambda i: "anything")  # the same error for every item
    settled = await settle(list(range(n)), model)
    assert failed(settled) == set(range(n))
    assert settled.broken
    # The first call, halving down to one item, then the next lone items until BROKEN_AFTER.
    assert settled.calls == 1 + int(math.log2(n)) + BROKEN_AFTER
    assert model.sizes.count(1) == BROKEN_AFTER


async def test_lone_items_it_tries_first_are_spread_over_the_batch():
    # Halves interleave: the first four items run alone are 0, n/2, n/4 and 3n/4, so four bad
    # neighbours (one request's items, say) never pass for a broken model.
    model = Model(lambda i: i < 4, say=lambda i: "the same")
    settled = await settle(list(range(16)), model)
    assert failed(settled) == {0, 1, 2, 3} and not settled.broken


async def test_a_model_is_not_taken_for_broken_once_a_call_succeeded():
    model = Model(lambda i: i % 2 == 1, say=lambda i: "the same")
    settled = await settle(list(range(16)), model)
    assert failed(settled) == set(range(1, 16, 2))  # the even half succeeded first
    assert not settled.broken


async def test_without_search_a_failing_piece_fails_whole():
    model = Model(lambda i: i == 3)
    settled = await settle(list(range(8)), model, search=False)
    assert failed(settled) == set(range(8)) and model.sizes == [8]


async def test_an_error_blamed_on_the_model_fails_the_rest_without_more_calls():
    # The search runs [0, 2] first (interleaved halves); the next call stalls: what is
    # answered keeps its result, the rest fail with the stall, and nothing more is called.
    class Stalled(Exception):
        pass

    calls: list[list[int]] = []

    async def call(piece: list[int]) -> list[int]:
        calls.append(piece)
        if len(calls) == 1:
            raise ValueError("cannot read 1")
        if len(calls) == 3:
            raise Stalled("stuck")
        return [10 * i for i in piece]

    def blame(exc: BaseException) -> Blame:
        return Blame.ALL if isinstance(exc, Stalled) else Blame.ITEM

    settled = await settle([0, 1, 2, 3], call, blame=blame)
    assert calls == [[0, 1, 2, 3], [0, 2], [1]]
    assert settled.outcomes[0] == 0 and settled.outcomes[2] == 20
    for i in (1, 3):
        outcome = settled.outcomes[i]
        assert isinstance(outcome, Failure) and isinstance(outcome.error, Stalled)


class TooBig(Exception):
    pass


def memory(limit: int, fat: Sequence[int] = ()) -> tuple[Callable[..., object], list[int]]:
    """A call that runs out of memory above ``limit`` items, or on a ``fat`` item at all."""
    sizes: list[int] = []

    async def call(piece: list[int]) -> list[int]:
        sizes.append(len(piece))
        if len(piece) > limit or any(i in fat for i in piece):
            raise TooBig(f"out of memory on {len(piece)}")
        return [10 * i for i in piece]

    return call, sizes


def size_blame(exc: BaseException) -> Blame:
    return Blame.SIZE if isinstance(exc, TooBig) else Blame.ITEM


async def test_a_piece_out_of_memory_is_run_in_halves_and_no_item_is_blamed():
    call, sizes = memory(limit=4)
    settled = await settle(list(range(16)), call, blame=size_blame)
    assert settled.outcomes == [10 * i for i in range(16)]
    assert sizes == [16, 8, 4, 4, 8, 4, 4]
    assert settled.too_big == 8


async def test_a_cap_splits_the_batch_before_it_runs():
    call, sizes = memory(limit=4)
    settled = await settle(list(range(16)), call, blame=size_blame, cap=4)
    assert settled.outcomes == [10 * i for i in range(16)]
    assert sizes == [4, 4, 4, 4] and settled.too_big is None


async def test_an_item_that_alone_does_not_fit_fails_alone_and_is_not_the_batch_size():
    call, sizes = memory(limit=16, fat=[5])
    settled = await settle(list(range(16)), call, blame=size_blame)
    assert failed(settled) == {5}
    assert str(settled.outcomes[5].error) == "out of memory on 1"  # type: ignore[union-attr]
    assert settled.too_big is None  # every piece that ran out held item 5
    assert max(sizes[1:]) == 8


# -- served: a tenth of the inputs are bad, 32 clients at once -------------------------------------


class Text(BaseModel):
    text: str


class Length(BaseModel):
    length: int


def is_bad(text: str) -> bool:
    return zlib.crc32(text.encode()) % 10 == 0


@gpu_service(name="choosy", route="/length", max_batch_size=16, wait_ms=5)
class Choosy(ModelServer[Text, Length]):
    """Raises for a whole batch that holds a bad text, naming it, as a tokenizer might."""

    sizes: list[int] = []  # noqa: RUF012

    def predict_batch(self, items: list[Text]) -> list[Length]:
        type(self).sizes.append(len(items))
        time.sleep(0.0005 * len(items))  # long enough for batches to form under load
        for item in items:
            if is_bad(item.text):
                raise ValueError(f"cannot tokenize {item.text!r}")
        return [Length(length=len(item.text)) for item in items]


async def test_served_under_load_no_good_item_fails_and_every_bad_item_gets_its_error():
    texts = [f"sentence number {i}" for i in range(400)]
    bad = {t for t in texts if is_bad(t)}
    assert 25 <= len(bad) <= 60  # about a tenth
    Choosy.sizes = []
    began = time.monotonic()
    async with aserve(Choosy) as client:
        slots = asyncio.Semaphore(32)

        async def post(text: str) -> httpx.Response:
            async with slots:
                return await client.post("/length", json={"text": text})

        responses = await asyncio.gather(*(post(t) for t in texts))
    for text, response in zip(texts, responses, strict=True):
        if text in bad:
            assert response.status_code == 500, (text, response.text)
            assert response.json()["code"] == "predict_failed"
        else:
            assert response.status_code == 200, (text, response.text)
            assert response.json() == {"length": len(text)}
    first_calls = [s for s in Choosy.sizes if s > 1]
    assert max(Choosy.sizes) <= 16 and len(first_calls) > 10  # batches did form
    assert time.monotonic() - began < 20
