"""``ModelRuntime``: the one place the user's hooks are called.

Whatever serves a class (``mfk serve``, a router mounted in someone's app, the GPU class of
the split topology, the colocated container), its hooks go through a ``ModelRuntime``:

- sync hooks run on the service's ``InferenceThread``, async hooks on the event loop of the
  caller (on Modal: the loop Modal runs the class's async methods on);
- ``load`` / ``to_device`` / ``warmup`` run in order, one service at a time per process
  (parallel imports of transformers race); ``unload`` and ``health`` when asked;
- ``run_batch`` answers one outcome per item (``outcomes``), finding the failing items of a
  batch that raised and fitting a batch that ran out of GPU memory (``isolation``,
  ``memory``); ``open_streams`` hands generator output to item streams (``pump``);
  ``steps`` runs a joining service's ``join`` / ``step`` / ``leave`` (``joining``); every
  model call is watched for stalls (``watchdog``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from ..exceptions import ModelStalled, ServingError
from .isolation import Blame, Failure, settle
from .joining import StepLoop
from .memory import BatchCap, free_cache, out_of_memory
from .outcomes import CountMismatch, Outcome, Outcomes
from .pump import StreamPump
from .recorder import NO_RECORDER, Recorder
from .spec import ServiceSpec
from .state import LoadState
from .streams import StreamBatch
from .thread import InferenceThread
from .watchdog import Watchdog

__all__ = ["LOAD_HOOKS", "ModelRuntime"]

logger = logging.getLogger("modal_fastapi_kit")

LOAD_HOOKS = ("load", "to_device", "warmup")
HEALTH_TIMEOUT = 5.0  # seconds a health() call may take before it counts as unhealthy
LOAD_POLL = 0.02  # seconds between tries for the process-wide load turn

# One service loads at a time per process: transformers' lazy imports race when two threads
# import it at once, and two loads compete for the same memory and cores anyway.
_LOAD_TURN = threading.Lock()


class ModelRuntime:
    """A ModelServer instance with its inference thread, hooks and watchdog.

    ``instance``: an instance already built (Modal builds the class itself in a container);
    otherwise ``start`` builds one on the inference thread. ``on_stall`` is called once each
    time the model is found stuck (Modal's container uses it to stop taking inputs).
    """

    def __init__(
        self,
        spec: ServiceSpec,
        *,
        instance: Any = None,
        on_stall: Callable[[ModelStalled], None] | None = None,
        recorder: Recorder = NO_RECORDER,
    ) -> None:
        self.spec = spec
        self.config = spec.config
        self.instance = instance
        self.thread = InferenceThread(f"mfk-inference[{spec.name}]")
        self.state = LoadState.CREATED
        self.error: str | None = None
        self.load_seconds: float | None = None
        self.phase_seconds: dict[str, float] = {}  # seconds each load hook took, in order
        self._hook = spec.predict
        self.outcomes = Outcomes(spec.hook_label, spec.response_model)
        self.watchdog = Watchdog(
            spec.hook_label, self.thread, asynchronous=spec.predict.asynchronous
        )
        if on_stall is not None:
            self.watchdog.add_listener(on_stall)
        self.batch_cap = BatchCap(spec.hook_label, spec.config.max_batch_size)
        self.batch_cap.add_listener(self._report_cap)
        self._pump = StreamPump(spec.predict, self.outcomes, self.watchdog, self.thread)
        # A joining service's running batch (join / step / leave); None for the other forms.
        self.steps = (
            StepLoop(
                lambda: self.instance,
                self.outcomes,
                self.watchdog,
                on_out_of_memory=self.batch_cap.ran_out,
            )
            if spec.predict.joining
            else None
        )
        self.recorder = recorder

    @property
    def recorder(self) -> Recorder:
        return self._recorder

    @recorder.setter
    def recorder(self, recorder: Recorder) -> None:
        self._recorder = self._pump.recorder = recorder
        if self.steps is not None:
            self.steps.recorder = recorder
        recorder.batch_cap(self.batch_cap.size)
        for phase, seconds in self.phase_seconds.items():  # loaded before it was given
            recorder.loaded(phase, seconds)

    @property
    def stalled(self) -> ModelStalled | None:
        """The error calls fail with while the model is stuck, else ``None``."""
        return self.watchdog.stalled

    def add_stall_listener(self, listener: Callable[[ModelStalled], None]) -> None:
        self.watchdog.add_listener(listener)

    def add_cap_listener(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(size)`` when the batch cap is lowered (after running out of memory)."""
        self.batch_cap.add_listener(listener)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, hooks: Sequence[str] = LOAD_HOOKS, *, final: bool = True) -> None:
        """Run the load ``hooks`` in order (building the instance first if needed).

        ``final=False`` leaves the state ``LOADING`` for a later call (Modal runs ``load``
        before a memory snapshot and the rest after each restore). Raises what a hook
        raised, after setting ``FAILED`` and ``error``.
        """
        if self.state in (LoadState.READY, LoadState.STOPPED, LoadState.FAILED):
            return
        began = time.monotonic()
        self.state = LoadState.LOADING
        step = "__init__"
        try:
            async with _load_turn():
                if self.instance is None:
                    self.instance = await self.thread.call(self.spec.server_cls)
                for step in hooks:
                    await self._timed_hook(step)
        except BaseException as exc:
            self.state = LoadState.FAILED
            self.error = f"{self.spec.name}.{step}() raised {type(exc).__name__}: {exc}"
            if isinstance(exc, Exception):
                logger.error("loading %s failed in %s()", self.spec.name, step, exc_info=exc)
            raise
        self.load_seconds = (self.load_seconds or 0.0) + time.monotonic() - began
        if final:
            self.state = LoadState.READY
            jobs = self.config.jobs
            self.watchdog.start(
                self.config.stall_seconds,
                self.spec.name,
                longest=None if jobs is None else jobs.run_timeout,
            )
            phases = ", ".join(f"{hook} {s:.1f}s" for hook, s in self.phase_seconds.items())
            detail = f" ({phases})" if phases else ""
            logger.info("%s ready in %.1fs%s", self.spec.name, self.load_seconds, detail)

    async def stop(self) -> None:
        """Run ``unload`` (if the model loaded) and let the inference thread end."""
        previous, self.state = self.state, LoadState.STOPPED
        self.watchdog.stop()
        try:
            if previous is LoadState.READY:
                stuck = self.stalled is not None or self.thread.busy_since is not None
                if stuck and not inspect.iscoroutinefunction(self.instance.unload):
                    logger.warning(
                        "%s: not calling unload(): the inference thread is still busy in %s",
                        self.spec.name,
                        self._hook.name,
                    )
                else:
                    await self._call_hook("unload")
        except Exception:
            logger.exception("%s.unload() raised", self.spec.name)
        finally:
            self.thread.close()

    async def healthy(self) -> bool:
        """Loaded, not stalled, and the model's own ``health()`` agrees (within 5 s)."""
        if self.state is not LoadState.READY or self.stalled is not None:
            return False
        health = self.instance.health
        try:
            if inspect.iscoroutinefunction(health):
                return bool(await asyncio.wait_for(health(), HEALTH_TIMEOUT))
            return bool(await asyncio.wait_for(asyncio.to_thread(health), HEALTH_TIMEOUT))
        except Exception:
            logger.exception("%s.health() failed", self.spec.name)
            return False

    async def _timed_hook(self, name: str) -> None:
        """Run a load hook; its seconds go to ``phase_seconds`` and the recorder (added up
        when a hook runs again, as after a memory snapshot's restore)."""
        began = time.perf_counter()
        await self._call_hook(name)
        took = time.perf_counter() - began
        self.phase_seconds[name] = self.phase_seconds.get(name, 0.0) + took
        self.recorder.loaded(name, self.phase_seconds[name])

    async def _call_hook(self, name: str) -> Any:
        fn = getattr(self.instance, name)
        if inspect.iscoroutinefunction(fn):
            return await fn()
        return await self.thread.call(fn)

    # -- predict -----------------------------------------------------------------------------

    async def run_batch(self, items: list[Any], *, bound: float | None = None) -> list[Outcome]:
        """One outcome per item, in order: the response model, or that item's error.
        ``bound``: the seconds a model call may run before it counts as stuck, where not
        ``stall_timeout`` (a job's ``run_timeout``)."""
        began = time.perf_counter()
        settled = await settle(
            items,
            self._predict if bound is None else functools.partial(self._predict, bound=bound),
            blame=_blame,
            search=self.config.isolate_failures,
            cap=self.batch_cap.lowered,
        )
        if settled.too_big is not None:
            self.batch_cap.ran_out(settled.too_big)
        outcomes = self._answers(settled.outcomes)
        failed: dict[str, int] = {}
        for outcome in outcomes:
            if isinstance(outcome, ServingError):
                name = type(outcome).__name__
                failed[name] = failed.get(name, 0) + 1
        for name, count in failed.items():
            self.recorder.failed(name, count)
        if settled.calls > 1:
            logger.warning(
                "%s: a batch of %d took %d calls%s; %d of its items failed",
                self.spec.hook_label,
                len(items),
                settled.calls,
                " (the model fails everything)" if settled.broken else "",
                sum(failed.values()),
            )
        if logger.isEnabledFor(logging.DEBUG):
            took = 1000 * (time.perf_counter() - began)
            logger.debug("%s: a batch of %d in %.1f ms", self.spec.name, len(items), took)
        return outcomes

    def _answers(self, settled: list[Outcome | Failure]) -> list[Outcome]:
        """The search's failures as the errors clients get; each error logged once."""
        counts: dict[int, tuple[BaseException, int]] = {}
        for outcome in settled:
            if isinstance(outcome, Failure):
                _, count = counts.get(id(outcome.error), (outcome.error, 0))
                counts[id(outcome.error)] = (outcome.error, count + 1)
        answers = {key: self.outcomes.error(error, count) for key, (error, count) in counts.items()}
        return [
            answers[id(outcome.error)] if isinstance(outcome, Failure) else outcome
            for outcome in settled
        ]

    async def _predict(self, items: list[Any], bound: float | None = None) -> list[Outcome]:
        """One call of the predict hook for ``items``; raises when it fails as a whole."""
        fn = getattr(self.instance, self._hook.name)
        watched = self.watchdog.call
        try:
            if self._hook.batch:
                results = await watched(fn, items, bound=bound)
                self.outcomes.check_count(results, len(items))
            elif self._hook.asynchronous:
                results = []
                for item in items:
                    try:
                        results.append(await watched(fn, item, bound=bound))
                    except ModelStalled:
                        raise
                    except Exception as exc:
                        results.append(exc)
            else:
                results = await watched(_each, fn, items, bound=bound)
        except Exception as exc:
            if out_of_memory(exc):
                free_cache()
            raise
        return [self.outcomes.coerce(result) for result in results]

    def _report_cap(self, size: int) -> None:
        self.recorder.batch_cap(size)

    # -- streams -----------------------------------------------------------------------------

    def open_streams(self, items: list[Any]) -> StreamBatch:
        """Start the generator for ``items``; each item's chunks go to its own stream."""
        return self._pump.open(getattr(self.instance, self._hook.name), items)


def _blame(exc: BaseException) -> Blame:
    if isinstance(exc, ModelStalled | CountMismatch):
        return Blame.ALL
    if out_of_memory(exc):
        return Blame.SIZE
    return Blame.ITEM


def _each(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """``predict`` over items on the inference thread; an item's exception fills its slot."""
    results: list[Any] = []
    for item in items:
        try:
            results.append(fn(item))
        except Exception as exc:
            results.append(exc)
    return results


@asynccontextmanager
async def _load_turn() -> AsyncIterator[None]:
    # A threading.Lock (one per process, whatever loop a service runs on) has no awaitable
    # form; a load takes seconds, so a short poll costs nothing.
    while not _LOAD_TURN.acquire(blocking=False):  # noqa: ASYNC110
        await asyncio.sleep(LOAD_POLL)
    try:
        yield
    finally:
        _LOAD_TURN.release()
