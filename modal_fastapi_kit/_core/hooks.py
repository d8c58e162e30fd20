"""``ModelRuntime``: the one place the user's hooks are called.

Whatever serves a class (``mfk serve``, a router mounted in someone's app, the GPU class of
the split topology, the colocated container), its hooks go through a ``ModelRuntime``:

- sync hooks run on the service's ``InferenceThread``, async hooks on the event loop of the
  caller (on Modal: the loop Modal runs the class's async methods on);
- ``load`` / ``to_device`` / ``warmup`` run in order, one service at a time per process
  (parallel imports of transformers race);
- ``run_batch`` answers one outcome per item: the response model, or the ``ServingError`` for
  that item. An exception put in an item's slot fails that item only; when the whole call
  raises, the batch is re-run in halves to find the failing items (``isolate_failures``);
  ``InputError`` keeps its 4xx; results are coerced into the response model item by item;
- ``open_streams`` steps a generator ``predict`` / ``predict_batch`` and hands each item's
  chunks to its ``ItemStream``; a stream whose reader left stops the generator;
- a watchdog marks the model stalled when one call runs past ``stall_timeout``, fails the
  calls waiting on it, and marks it healthy again if the call ever returns.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from pydantic import BaseModel, ValidationError

from ..exceptions import ModelStalled, PredictError, ServingError, as_predict_error
from .recorder import NO_RECORDER, Recorder
from .spec import ServiceSpec
from .streams import END, ItemStream, StreamBatch
from .thread import InferenceThread

__all__ = ["LOAD_HOOKS", "LoadState", "ModelRuntime", "Outcome"]

logger = logging.getLogger("modal_fastapi_kit")

LOAD_HOOKS = ("load", "to_device", "warmup")
HEALTH_TIMEOUT = 5.0  # seconds a health() call may take before it counts as unhealthy
LOAD_POLL = 0.02  # seconds between tries for the process-wide load turn

# A model's result for one item: its response, or the error that item is answered with.
Outcome = BaseModel | ServingError

# One service loads at a time per process: transformers' lazy imports race when two threads
# import it at once, and two loads compete for the same memory and cores anyway.
_LOAD_TURN = threading.Lock()


class LoadState(str, enum.Enum):
    """Where a runtime (or a backend) is in its life; ``/readyz`` is 200 only in ``READY``."""

    CREATED = "created"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"


class _CountMismatch(Exception):
    """predict_batch answered a different number of results than it got items."""


class _StepDone:
    """What a sync generator step returns at its end (StopIteration cannot cross a future)."""


_STEP_DONE = _StepDone()


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
        self.recorder = recorder
        self.config = spec.config
        self.instance = instance
        self.thread = InferenceThread(f"mfk-inference[{spec.name}]")
        self.state = LoadState.CREATED
        self.error: str | None = None
        self.stalled: ModelStalled | None = None
        self.load_seconds: float | None = None
        self._hook = spec.predict
        self._response_model = spec.response_model
        self._calls: dict[asyncio.Future[Any], float | None] = {}  # waiting -> async start
        self._stall_listeners: list[Callable[[ModelStalled], None]] = []
        if on_stall is not None:
            self._stall_listeners.append(on_stall)
        self._watchdog: asyncio.Task[None] | None = None

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
                    await self._call_hook(step)
        except BaseException as exc:
            self.state = LoadState.FAILED
            self.error = f"{self.spec.name}.{step}() raised {type(exc).__name__}: {exc}"
            if isinstance(exc, Exception):
                logger.error("loading %s failed in %s()", self.spec.name, step, exc_info=exc)
            raise
        self.load_seconds = (self.load_seconds or 0.0) + time.monotonic() - began
        if final:
            self.state = LoadState.READY
            self._start_watchdog()
            logger.info("%s ready in %.1fs", self.spec.name, self.load_seconds)

    async def stop(self) -> None:
        """Run ``unload`` (if the model loaded) and let the inference thread end."""
        previous, self.state = self.state, LoadState.STOPPED
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
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

    def add_stall_listener(self, listener: Callable[[ModelStalled], None]) -> None:
        self._stall_listeners.append(listener)

    async def _call_hook(self, name: str) -> Any:
        fn = getattr(self.instance, name)
        if inspect.iscoroutinefunction(fn):
            return await fn()
        return await self.thread.call(fn)

    # -- predict -----------------------------------------------------------------------------

    async def run_batch(self, items: list[Any]) -> list[Outcome]:
        """One outcome per item, in order: the response model, or that item's error."""
        if logger.isEnabledFor(logging.DEBUG):
            began = time.perf_counter()
            outcomes = await self._run_batch(items)
            took = 1000 * (time.perf_counter() - began)
            logger.debug("%s: a batch of %d in %.1f ms", self.spec.name, len(items), took)
            return outcomes
        return await self._run_batch(items)

    async def _run_batch(self, items: list[Any]) -> list[Outcome]:
        outcomes = await self._answer(items)
        failed: dict[str, int] = {}
        for outcome in outcomes:
            if isinstance(outcome, ServingError):
                name = type(outcome).__name__
                failed[name] = failed.get(name, 0) + 1
        for name, count in failed.items():
            self.recorder.failed(name, count)
        return outcomes

    async def _answer(self, items: list[Any]) -> list[Outcome]:
        try:
            return await self._outcomes(items)
        except _CountMismatch as exc:
            return [PredictError(str(exc)) for _ in items]
        except ModelStalled as exc:
            return [exc for _ in items]
        except Exception as exc:
            if not self.config.isolate_failures or len(items) == 1:
                self._log_failure(exc, len(items))
                error = as_predict_error(exc, self.spec.hook_label)
                return [error for _ in items]
            return await self._isolate(items, exc)

    async def _outcomes(self, items: list[Any]) -> list[Outcome]:
        hook = self._hook
        fn = getattr(self.instance, hook.name)
        if hook.batch:
            results = await self._model_call(fn, items)
            if not isinstance(results, list | tuple) or len(results) != len(items):
                count = len(results) if isinstance(results, list | tuple) else type(results)
                raise _CountMismatch(
                    f"{self.spec.hook_label} returned {count!r} results for {len(items)} items; "
                    "return a list with one result per item, in order"
                )
        elif hook.asynchronous:
            results = []
            for item in items:
                try:
                    results.append(await self._model_call(fn, item))
                except ModelStalled:
                    raise
                except Exception as exc:
                    results.append(exc)
        else:
            results = await self._model_call(_each, fn, items)
        return [self.coerce(result) for result in results]

    async def _isolate(self, items: list[Any], first: Exception) -> list[Outcome]:
        """Re-run a failed batch in halves so that only the failing items fail.

        Failing sub-batches are split until single items remain, within a budget of
        2 * ceil(log2(n)) failing re-runs: enough to find one or two bad items exactly,
        bounded when the model fails everything (then the rest fail with the last error).
        """
        logger.warning(
            "%s raised %s for a batch of %d; re-running it in halves to find the failing items",
            self.spec.hook_label,
            type(first).__name__,
            len(items),
            exc_info=first,
        )
        budget = [2 * math.ceil(math.log2(len(items)))]
        outcomes = await self._bisect(items, budget, first)
        failed = sum(isinstance(o, ServingError) for o in outcomes)
        logger.warning("%s: %d of %d items failed", self.spec.hook_label, failed, len(items))
        return outcomes

    async def _bisect(self, items: list[Any], budget: list[int], error: Exception) -> list[Outcome]:
        outcomes: list[Outcome] = []
        middle = len(items) // 2
        for half in (items[:middle], items[middle:]):
            if budget[0] <= 0:  # out of re-runs: the rest fail with the last error
                outcomes += [as_predict_error(error, self.spec.hook_label) for _ in half]
                continue
            try:
                outcomes += await self._outcomes(half)
            except (_CountMismatch, ModelStalled):
                raise
            except Exception as exc:
                budget[0] -= 1
                if len(half) == 1:
                    self._log_failure(exc, 1)
                    outcomes.append(as_predict_error(exc, self.spec.hook_label))
                else:
                    outcomes += await self._bisect(half, budget, exc)
        return outcomes

    def coerce(self, result: Any) -> Outcome:
        """A result for one item as the response model, or the error it stands for."""
        model = self._response_model
        if isinstance(result, model):
            return result
        if isinstance(result, BaseException):
            if not isinstance(result, ServingError):
                self._log_failure(result, 1)
            return as_predict_error(result, self.spec.hook_label)
        try:
            return model.model_validate(result)
        except ValidationError as exc:
            return PredictError(
                f"{self.spec.hook_label} returned a value that does not match "
                f"{model.__name__}: {exc.error_count()} validation errors"
            )

    def _log_failure(self, exc: BaseException, count: int) -> None:
        if isinstance(exc, ServingError):  # InputError and friends: the client's answer says it
            logger.info("%s: %s (%d items)", self.spec.hook_label, exc, count)
            return
        logger.error(
            "%s raised for %d item%s", self.spec.hook_label, count, "s"[count == 1 :], exc_info=exc
        )

    # -- streams -----------------------------------------------------------------------------

    def open_streams(self, items: list[Any]) -> StreamBatch:
        """Start the generator for ``items``; each item's chunks go to its own stream.

        ``predict(item)`` yields one chunk per step for its item; ``predict_batch(items)``
        yields per step a list with, for each item, a chunk, ``None`` (nothing this step),
        ``END`` (that item is done) or an exception (that item fails).
        """
        streams = [ItemStream() for _ in items]
        if self.stalled is not None:
            for stream in streams:
                stream.finish(self.stalled)
            return StreamBatch(list(streams), done=_done_future())
        fn = getattr(self.instance, self._hook.name)
        generators = [fn(items)] if self._hook.batch else [fn(item) for item in items]
        loop = asyncio.get_running_loop()
        if self._hook.batch:
            pumps = [loop.create_task(self._pump(generators[0], streams))]
        else:
            pumps = [
                loop.create_task(self._pump(gen, [stream]))
                for gen, stream in zip(generators, streams, strict=True)
            ]
        return StreamBatch(list(streams), done=asyncio.gather(*pumps))

    async def _pump(self, generator: Any, streams: list[ItemStream]) -> None:
        batch = self._hook.batch
        try:
            while not all(s.closed or s.finished for s in streams):
                try:
                    step = await self._step(generator)
                except Exception as exc:
                    if not isinstance(exc, ServingError):
                        self._log_failure(exc, len(streams))
                    error = as_predict_error(exc, self.spec.hook_label)
                    self.recorder.failed(type(error).__name__, len(streams))
                    for stream in streams:
                        stream.finish(error)
                    return
                if step is _STEP_DONE:
                    return
                if not batch:
                    self._deliver(streams[0], step)
                elif isinstance(step, list | tuple) and len(step) == len(streams):
                    for stream, chunk in zip(streams, step, strict=True):
                        self._deliver(stream, chunk)
                else:
                    error = PredictError(
                        f"{self.spec.hook_label} yielded {type(step).__name__} for a batch of "
                        f"{len(streams)}; yield a list with one chunk (or None, or END) per item"
                    )
                    for stream in streams:
                        stream.finish(error)
                    return
        finally:
            for stream in streams:
                stream.finish()
            await self._close_generator(generator)

    def _deliver(self, stream: ItemStream, chunk: Any) -> None:
        if chunk is None or stream.finished or stream.closed:
            return
        if chunk is END:
            stream.finish()
            return
        outcome = self.coerce(chunk)
        if isinstance(outcome, ServingError):
            self.recorder.failed(type(outcome).__name__, 1)
            stream.finish(outcome)
        else:
            self.recorder.chunk()
            stream.put(outcome)

    async def _step(self, generator: Any) -> Any:
        if self._hook.asynchronous:
            try:
                return await self._model_call(generator.__anext__)
            except StopAsyncIteration:
                return _STEP_DONE
        return await self._model_call(next, generator, _STEP_DONE)

    async def _close_generator(self, generator: Any) -> None:
        try:
            if self._hook.asynchronous:
                await generator.aclose()
            elif self.stalled is None:  # a stuck thread would never get to it
                await self.thread.call(generator.close)
        except Exception:
            logger.exception("%s: closing its generator raised", self.spec.hook_label)

    # -- model calls and the watchdog ----------------------------------------------------------

    async def _model_call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call the model once (sync on the thread, async on the loop), watched for stalls."""
        if self.stalled is not None:
            raise self.stalled
        if not self._hook.asynchronous:
            waiting: asyncio.Future[Any] = self.thread.call(fn, *args)
            self._calls[waiting] = None
            try:
                return await waiting
            finally:
                del self._calls[waiting]
        loop = asyncio.get_running_loop()
        waiting = loop.create_future()
        task = asyncio.ensure_future(fn(*args))
        task.add_done_callback(lambda t: _copy_result(t, waiting))
        self._calls[waiting] = loop.time()
        try:
            return await waiting
        finally:
            del self._calls[waiting]
            if not task.done():
                task.cancel()  # the watchdog failed it, or the caller left

    def _start_watchdog(self) -> None:
        bound = self.config.stall_seconds
        if bound is None or self._watchdog is not None:
            return
        self._watchdog = asyncio.get_running_loop().create_task(
            self._watch(bound), name=f"modal_fastapi_kit.watchdog[{self.spec.name}]"
        )

    async def _watch(self, bound: float) -> None:
        interval = min(1.0, bound / 4)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            running = self._running_for(loop)
            if running is not None and running > bound and self.stalled is None:
                self._stall(running, bound)
            elif self.stalled is not None and (running is None or running <= bound):
                logger.warning("%s: the stuck call returned; serving again", self.spec.hook_label)
                self.stalled = None

    def _running_for(self, loop: asyncio.AbstractEventLoop) -> float | None:
        """How long the oldest model call in progress has run, in seconds, or None."""
        since = self.thread.busy_since
        oldest = None if since is None else time.monotonic() - since
        now = loop.time()
        for started in self._calls.values():
            if started is not None and (oldest is None or now - started > oldest):
                oldest = now - started
        return oldest

    def _stall(self, running: float, bound: float) -> None:
        self.stalled = error = ModelStalled(
            f"{self.spec.hook_label} has been running for {running:.0f}s, past "
            f"stall_timeout={bound:g}s; the model is stuck and this server cannot serve until "
            "it returns (restart it)"
        )
        logger.error("%s", error)
        for waiting in list(self._calls):
            if not waiting.done():
                waiting.set_exception(error)
        for listener in self._stall_listeners:
            try:
                listener(error)
            except Exception:
                logger.exception("a stall listener of %s raised", self.spec.name)


def _each(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """``predict`` over items on the inference thread; an item's exception fills its slot."""
    results: list[Any] = []
    for item in items:
        try:
            results.append(fn(item))
        except Exception as exc:
            results.append(exc)
    return results


def _copy_result(task: asyncio.Task[Any], waiting: asyncio.Future[Any]) -> None:
    if waiting.done():
        if not task.cancelled():
            task.exception()  # retrieved: the caller already has its answer
        return
    if task.cancelled():
        waiting.cancel()
    elif (exc := task.exception()) is not None:
        waiting.set_exception(exc)
    else:
        waiting.set_result(task.result())


def _done_future() -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


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
