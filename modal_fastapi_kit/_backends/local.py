"""The in-process backend: the model's ``ModelRuntime`` behind the dynamic batcher."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._core.batcher import Batcher, JoiningBatcher
from .._core.recorder import NO_RECORDER, Recorder, Trace
from .._core.runtime import ModelRuntime
from .._core.spec import ServiceSpec
from .._core.state import LoadState
from .._core.streams import StreamBatch
from .._metrics import metrics_for
from ..exceptions import ErrorCode, LoadFailed, ModelStalled, NotReadyError

if TYPE_CHECKING:
    from .._jobs.service import JobService

__all__ = ["LocalBackend"]

logger = logging.getLogger("modal_fastapi_kit")

LOAD_FAILED = "the model failed to load; the server's log says why"
LOAD_RETRY_DELAY = 5.0  # seconds before the first new load after a failed one
MAX_LOAD_RETRY_DELAY = 60.0


class LocalBackend:
    """Serves a ModelServer in this process: requests are batched and handed to its runtime.

    ``runtime``: one that is already loaded (the colocated container's, loaded by Modal's
    ``@enter``); this backend then neither loads nor unloads it. Without it the backend builds
    its own runtime, loads it in the background on ``start`` and unloads it on ``stop``.
    ``jobs_store``: the SQLite file of the service's jobs, where ``JobOptions.store`` and
    ``$MFK_JOBS_DB`` give none (``testing.serve`` passes a temporary one).
    """

    def __init__(
        self,
        spec: ServiceSpec,
        *,
        runtime: ModelRuntime | None = None,
        jobs_store: str | Path | None = None,
    ) -> None:
        self.spec = spec
        self.config = spec.config
        self.recorder: Recorder = metrics_for(spec) if spec.config.metrics else NO_RECORDER
        self.runtime = (
            runtime if runtime is not None else ModelRuntime(spec, recorder=self.recorder)
        )
        if runtime is not None and spec.config.metrics:  # the container's: count its failures
            runtime.recorder = self.recorder
        self._owns_runtime = runtime is None
        self.jobs_store = jobs_store
        self._batcher: Batcher[Any] | None = None
        self._load_task: asyncio.Task[None] | None = None
        self._started = False
        self._stopped = False
        self._retrying = False  # waiting to load again after a failure

    @property
    def service_name(self) -> str:
        return self.spec.name

    @property
    def state(self) -> LoadState:
        if self._stopped:
            return LoadState.STOPPED
        if self._retrying:
            return LoadState.LOADING
        state = self.runtime.state
        if state is LoadState.READY and self._batcher is None:
            return LoadState.LOADING
        return state

    @property
    def error(self) -> str | None:
        return self.runtime.error

    @property
    def batcher(self) -> Batcher[Any] | None:
        return self._batcher

    @property
    def max_batch_size(self) -> int:
        """The most items a batch holds now (``max_batch_size``, or the lowered cap)."""
        batcher = self._batcher
        return self.config.max_batch_size if batcher is None else batcher.max_batch_size

    @property
    def queue_depth(self) -> int:
        return 0 if self._batcher is None else self._batcher.queue_size

    @property
    def load_seconds(self) -> float | None:
        return self.runtime.load_seconds

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        if self._owns_runtime:
            self._load_task = asyncio.get_running_loop().create_task(
                self._load(), name=f"modal_fastapi_kit.load[{self.spec.name}]"
            )
        else:
            self._serve()

    async def _load(self) -> None:
        """Load; with ``load_retries``, load again (a fresh instance) after a failure, waiting
        5 s, then twice as long each time (at most 60 s)."""
        delay = LOAD_RETRY_DELAY
        for attempt in range(1 + self.config.load_retries):
            try:
                await self.runtime.start()
                break
            except Exception:
                if attempt == self.config.load_retries:
                    return  # for good: the runtime is FAILED, /healthz answers 503
                logger.warning(
                    "%s failed to load (attempt %d of %d); loading again in %.0fs",
                    self.spec.name,
                    attempt + 1,
                    1 + self.config.load_retries,
                    delay,
                )
            self._retrying = True
            try:
                await asyncio.sleep(delay)
            finally:
                self._retrying = False
            delay = min(2 * delay, MAX_LOAD_RETRY_DELAY)
            self.runtime = ModelRuntime(self.spec, recorder=self.recorder)
        self._serve()

    def _serve(self) -> None:
        config = self.config
        if self.runtime.steps is not None:  # streams join one running batch between steps
            if config.max_batch_size == 1:
                logger.warning(
                    "%s defines join, step and leave with max_batch_size=1: one stream at a "
                    "time, each to its end; set max_batch_size to the most streams the model "
                    "decodes together",
                    self.spec.name,
                )
            self._batcher = JoiningBatcher(
                self.runtime.steps,
                max_batch_size=config.max_batch_size,
                max_queue_size=config.max_queue_size,
                recorder=self.recorder,
            )
        else:
            self._batcher = self._batches()
        self._batcher.start()
        self.runtime.add_stall_listener(self._on_stall)
        self.runtime.add_cap_listener(self._batcher.lower_cap)

    def _batches(self) -> Batcher[Any]:
        spec, config = self.spec, self.config
        if spec.streaming:

            async def run(items: list[Any]) -> StreamBatch:
                return self.runtime.open_streams(items)

        else:
            run = self.runtime.run_batch  # type: ignore[assignment]
        # Async hooks and generators interleave on the loop / the inference thread; a sync
        # predict_batch takes the thread for a whole batch, so one batch runs at a time.
        in_flight = max(1, config.max_concurrent_inputs // config.max_batch_size)
        if not (spec.streaming or spec.predict.asynchronous):
            in_flight = 1
        return Batcher(
            run,
            max_batch_size=config.max_batch_size,
            wait_ms=config.wait_ms,
            max_queue_size=config.max_queue_size,
            max_in_flight=in_flight,
            recorder=self.recorder,
        )

    def _on_stall(self, error: ModelStalled) -> None:
        if self._batcher is not None:
            self._batcher.fail_queued(error)

    def submit(
        self, item: Any, *, deadline: float, trace: Trace | None = None
    ) -> asyncio.Future[Any]:
        batcher = self._batcher
        if batcher is None or self._stopped or self.runtime.state is not LoadState.READY:
            if self.state is LoadState.FAILED:
                raise LoadFailed(LOAD_FAILED)
            if self.state is LoadState.STOPPED:
                raise NotReadyError("the server is shutting down", code=ErrorCode.SHUTTING_DOWN)
            raise NotReadyError("the model is still loading; retry shortly")
        if self.runtime.stalled is not None:
            raise self.runtime.stalled
        return batcher.submit(item, deadline=deadline, trace=trace)

    async def healthy(self) -> bool:
        return self.state is LoadState.READY and await self.runtime.healthy()

    def job_service(self) -> JobService | None:
        """The service's jobs in a SQLite file, run by this backend's runtime."""
        if self.config.jobs is None:
            return None
        from .._jobs.local import LocalJobs

        return LocalJobs(self.spec, self, path=self.jobs_store)

    def restart_reason(self) -> tuple[str, str] | None:
        stalled = self.runtime.stalled
        if stalled is not None:
            return "stalled", stalled.detail
        if self.runtime.state is LoadState.FAILED and not self._retrying:
            return "failed", LOAD_FAILED
        return None

    async def stop(self) -> None:
        """Stop taking requests, drain what is queued and running (at most request_timeout:
        nobody waits longer), then unload the model if this backend loaded it."""
        self._stopped = True
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
            await asyncio.wait({self._load_task})
        if self._batcher is not None:
            await self._batcher.stop(timeout=self.config.request_timeout)
        if self._owns_runtime:
            await self.runtime.stop()
