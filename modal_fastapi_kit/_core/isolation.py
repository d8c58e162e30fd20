"""``settle``: run a batch so that each item gets its own outcome, however many items are bad.

``settle(items, call)`` calls ``call`` on the whole batch. When that raises, what the error
is blamed on (``blame``) decides what happens next:

- ``Blame.ITEM`` (the default: some item is bad): the search below finds every failing item;
- ``Blame.SIZE`` (out of memory): the piece is split in halves, both run, no item blamed; an
  item fails only if it alone does not fit;
- ``Blame.ALL`` (the model cannot answer at all: stalled, wrong result count): this piece and
  every piece not yet answered fail with the error, without further calls.

The search splits a failed piece into two halves, interleaved (items 0, 2, 4, ... and 1, 3,
5, ..., so that neighbours such as one request's items land apart), runs each half and splits
again each half that fails, down to single items. An item fails only when it fails alone.
When the first half succeeds, the second must hold a failing item, so it is split without
being run (a single item is always run alone, so that it fails with its own error).

Cost, in calls after the one that failed, for a batch of ``n`` items (measured over random
patterns of bad items):

- at most one call per piece of the halving tree: never more than ``2n - 2`` re-runs (30 for
  16 items), whatever fails;
- one bad item: about ``1.5 * log2(n)`` re-runs, most of them small (6.5 on average for 16
  items, at most 8; 8 for 32, at most 10); 2 bad of 16: 11; 4 bad of 16: 17; with a tenth
  of the items bad, 8.4 on average for 16 and 18.5 for 32;
- a model that fails everything is recognised early: once ``BROKEN_AFTER`` (4) items have
  failed alone, all with the same error (type and message), and no call for this batch has
  succeeded, the items not yet answered fail with that error: ``log2(n) + 4`` re-runs (8 for
  16, 9 for 32, 10 for 64). Good items can be failed by this rule only when the first four
  items run alone (0, n/2, n/4, 3n/4: spread over the batch, not one request's neighbours) are
  bad with the very same message and every call before them failed too. Items that fail with
  errors of their own are all searched for.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["BROKEN_AFTER", "Blame", "Failure", "Settled", "settle"]

BROKEN_AFTER = 4  # items failed alone with one error, nothing succeeded: the model is broken

T = TypeVar("T")
R = TypeVar("R")


class Blame(enum.Enum):
    """What a failed call is blamed on."""

    ITEM = "item"  # an item of the piece: find it
    SIZE = "size"  # the piece's size (out of memory): split it, blame no item
    ALL = "all"  # the model: fail everything not yet answered


@dataclass(frozen=True, slots=True)
class Failure:
    """An item's outcome when it failed: the error of the call it failed in (alone, unless the
    model was found broken or ``search`` was off)."""

    error: BaseException


@dataclass(slots=True)
class Settled(Generic[R]):
    """One outcome per item, in order, and how they were found.

    ``calls``: calls made, the first included. ``too_big``: the size of the smallest piece
    that ran out of memory while holding no item that alone did not fit (``None``: none
    did). ``broken``: the model was found to fail everything (see ``BROKEN_AFTER``).
    """

    outcomes: list[R | Failure]
    calls: int
    too_big: int | None = None
    broken: bool = False


def _item(_: BaseException) -> Blame:
    return Blame.ITEM


async def settle(
    items: Sequence[T],
    call: Callable[[list[T]], Awaitable[Sequence[R]]],
    *,
    blame: Callable[[BaseException], Blame] = _item,
    search: bool = True,
    cap: int | None = None,
    broken_after: int = BROKEN_AFTER,
) -> Settled[R]:
    """Run ``items`` through ``call`` (which answers one result per item, or raises).

    ``search=False`` fails a piece that raised an ``ITEM`` error as a whole (one out of memory
    still runs in halves). ``cap``: pieces larger than this are split before they are run.
    """
    if not items:
        return Settled([], 0)
    run = _Search(items, call, blame, search, cap or len(items), broken_after)
    every = list(range(len(items)))
    if len(items) > run.limit:
        await run.piece(every, None)
        return run.result()
    run.calls = 1
    try:
        results = await call(list(items))
    except Exception as exc:
        await run.failed(every, exc)
        return run.result()
    return Settled(list(results), 1)


@dataclass(eq=False)
class _Search(Generic[T, R]):
    items: Sequence[T]
    call: Callable[[list[T]], Awaitable[Sequence[R]]]
    blame: Callable[[BaseException], Blame]
    search: bool
    limit: int
    broken_after: int
    outcomes: dict[int, R | Failure] = field(default_factory=dict)
    calls: int = 0
    succeeded: bool = False
    failed_alone: int = 0
    alone_said: tuple[type, str] | None = None  # the first error an item failed with alone
    alone_differ: bool = False  # items failed alone with different errors: not a broken model
    stop: BaseException | None = None  # once set, what is not answered fails with it
    broken: bool = False
    too_big: list[list[int]] = field(default_factory=list)  # pieces that ran out of memory
    alone_too_big: set[int] = field(default_factory=set)  # items that alone did not fit

    async def piece(self, idx: list[int], known: BaseException | None) -> None:
        """Answer the items at ``idx``; ``known``: the error this piece is known to raise."""
        if self.stop is not None:
            self._fail(idx, self.stop)
            return
        if len(idx) > self.limit:
            await self._halves(idx, None)
            return
        if known is not None and len(idx) > 1:
            await self._halves(idx, known)
            return
        self.calls += 1
        try:
            results = await self.call([self.items[i] for i in idx])
        except Exception as exc:
            await self.failed(idx, exc)
            return
        self.succeeded = True
        for i, result in zip(idx, results, strict=True):
            self.outcomes[i] = result

    async def failed(self, idx: list[int], error: Exception) -> None:
        """The call for the items at ``idx`` raised ``error``: answer them all the same."""
        blame = self.blame(error)
        if blame is Blame.ALL:
            self.stop = error
            self._fail(idx, error)
        elif len(idx) == 1:
            self._fail_alone(idx[0], error, blame)
        elif blame is Blame.SIZE:
            self.too_big.append(idx)
            await self._halves(idx, None)  # no item to blame: both halves must run
        elif not self.search:
            self._fail(idx, error)
        else:
            await self._halves(idx, error)

    async def _halves(self, idx: list[int], known: BaseException | None) -> None:
        first, second = idx[0::2], idx[1::2]
        await self.piece(first, None)
        if known is not None and not any(isinstance(self.outcomes[i], Failure) for i in first):
            await self.piece(second, known)  # the failing item is in here: no need to run it
        else:
            await self.piece(second, None)

    def _fail_alone(self, index: int, error: BaseException, blame: Blame) -> None:
        self._fail([index], error)
        if blame is Blame.SIZE:
            self.alone_too_big.add(index)
        said = (type(error), str(error))
        if self.alone_said is None:
            self.alone_said = said
        elif said != self.alone_said:
            self.alone_differ = True
        self.failed_alone += 1
        if self.failed_alone >= self.broken_after and not (self.succeeded or self.alone_differ):
            self.stop, self.broken = error, True

    def _fail(self, idx: list[int], error: BaseException) -> None:
        failure = Failure(error)
        for i in idx:
            self.outcomes[i] = failure

    def result(self) -> Settled[R]:
        innocent = [p for p in self.too_big if self.alone_too_big.isdisjoint(p)]
        too_big = min(map(len, innocent)) if innocent else None
        outcomes = [self.outcomes[i] for i in range(len(self.items))]
        return Settled(outcomes, self.calls, too_big, self.broken)
