"""The in-process backend: the model on one inference thread, behind the dynamic batcher."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .._batching import Batcher
from .._config import ServiceConfig
from .._errors import NotReadyError
from .._server import ModelServer, batch_function
from ._base import LoadState

__all__ = ["LocalBackend"]

logger = logging.getLogger("modal_fastapi_kit")


class LocalBackend:
    """Runs a ModelServer in this process.

    ``load``, ``warmup``, sync ``predict``/``predict_batch`` and ``unload`` all run on one
    dedicated thread, so the model is never entered from two threads at once and the event
    loop stays free to take requests while a batch runs.
    """

    def __init__(
        self,
        server_cls: type[ModelServer[Any, Any]],
        config: ServiceConfig,
        *,
        server: ModelServer[Any, Any] | None = None,
    ) -> None:
        """``server``: an instance already loaded (by Modal's ``@enter``); not loaded again."""
        self.server_cls = server_cls
        self.config = config
        self._loaded = server
        self._state = LoadState.CREATED
        self._error: str | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._server: ModelServer[Any, Any] | None = None
        self._batcher: Batcher[Any, Any] | None = None
        self._load_task: asyncio.Task[None] | None = None
        self.load_started: float | None = None
        self.load_seconds: float | None = None

    @property
    def state(self) -> LoadState:
        return self._state

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def batcher(self) -> Batcher[Any, Any] | None:
        return self._batcher

    async def start(self) -> None:
        if self._state is not LoadState.CREATED:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mfk-inference")
        self._state = LoadState.LOADING
        self.load_started = time.monotonic()
        self._load_task = asyncio.get_running_loop().create_task(
            self._load(), name=f"modal_fastapi_kit.load[{self.server_cls.__name__}]"
        )

    async def wait_loaded(self) -> None:
        """Wait until loading finished, successfully or not."""
        if self._load_task is not None:
            await asyncio.shield(self._load_task)

    async def _load(self) -> None:
        try:
            server = self._loaded
            if server is None:
                server = await self._on_thread(self.server_cls)
                await self._call(server.load)
                await self._call(server.to_device)
                await self._call(server.warmup)
            run, is_async = batch_function(server)
            self._server = server
            self._batcher = Batcher(
                self._batch_runner(run, is_async),
                max_batch_size=self.config.max_batch_size,
                wait_ms=self.config.wait_ms,
                max_queue_size=self.config.max_queue_size,
                max_in_flight=(
                    max(1, self.config.max_concurrent_inputs // self.config.max_batch_size)
                    if is_async
                    else 1
                ),
            )
            self._batcher.start()
        except Exception as exc:
            self._state = LoadState.FAILED
            self._error = f"{self.server_cls.__name__}.load() raised {type(exc).__name__}: {exc}"
            logger.error("loading %s failed", self.server_cls.__name__, exc_info=exc)
            return
        assert self.load_started is not None
        self.load_seconds = time.monotonic() - self.load_started
        self._state = LoadState.READY
        logger.info("%s ready in %.1fs", self.server_cls.__name__, self.load_seconds)

    def _batch_runner(self, run: Callable[..., Any], is_async: bool) -> Callable[..., Any]:
        if is_async:
            return run

        def on_thread(items: list[Any]) -> asyncio.Future[Any]:
            return asyncio.get_running_loop().run_in_executor(self._executor, run, items)

        return on_thread

    async def _on_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _call(self, hook: Callable[[], Any]) -> Any:
        """Run a sync hook on the inference thread, or await an async one."""
        if inspect.iscoroutinefunction(hook):
            return await hook()
        return await self._on_thread(hook)

    def submit(self, item: Any, *, deadline: float) -> asyncio.Future[Any]:
        if self._batcher is None or self._state is not LoadState.READY:
            raise NotReadyError(self._not_ready_reason())
        return self._batcher.submit(item, deadline=deadline)

    def _not_ready_reason(self) -> str:
        if self._state is LoadState.FAILED:
            return f"the model failed to load: {self._error}"
        if self._state is LoadState.STOPPED:
            return "the server is shutting down"
        return "the model is still loading; retry shortly"

    async def healthy(self) -> bool:
        if self._state is not LoadState.READY or self._server is None:
            return False
        health = self._server.health
        try:
            if inspect.iscoroutinefunction(health):
                return bool(await health())
            return bool(await asyncio.to_thread(health))
        except Exception:
            logger.exception("%s.health() raised", self.server_cls.__name__)
            return False

    async def stop(self) -> None:
        previous, self._state = self._state, LoadState.STOPPED
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        if self._batcher is not None:
            await self._batcher.stop()
        if previous is LoadState.READY and self._server is not None:
            try:
                await self._call(self._server.unload)
            except Exception:
                logger.exception("%s.unload() raised", self.server_cls.__name__)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
