"""What the generated Modal methods do inside a container.

Every generated method is ``async``, so Modal runs them all, and the lifecycle hooks, on the
one event loop of the container (``modal._runtime.user_code_event_loop``). Each container
instance gets one ``ModelRuntime``: its sync hooks run on the runtime's inference thread and
its async hooks on that loop, so whatever an async ``load()`` ties to its loop (a task, an
async client, an engine) is alive when inputs arrive, exactly as with ``mfk serve``.

- ``enter`` (``@modal.enter``): ``load``, ``to_device``, ``warmup``; with memory snapshots
  ``enter_before_snapshot`` runs ``load`` and ``enter`` the rest after each restore.
- ``exit`` (``@modal.exit``): ``unload``, once, after the container's inputs finished.
- ``predict`` (``@modal.batched`` / ``@modal.method``): one envelope per item (``_core.wire``).
- ``stream`` (a generator ``@modal.method``): the item goes through the kit's own batcher in
  the container (Modal cannot batch generators) and its chunks come back as envelopes.

A request's files arrive as bytes beside its JSON and are ``File`` s in memory here (``path``
writes a temporary copy); they are closed once the batch (or the stream) is answered.
- ``web`` (colocated ``@modal.asgi_app``): the router on a ``LocalBackend`` over the runtime.

When the runtime finds the model stalled, the container stops taking inputs
(``modal.experimental.stop_fetching_inputs``): it fails what it holds at once and exits, and
Modal starts a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any

from .._backends.local import LocalBackend
from .._core.runtime import LOAD_HOOKS, ModelRuntime
from .._core.spec import service_spec
from .._core.wire import Wire, decode_request, encode_chunk, encode_outcome
from .._file import files_in
from .._heap import freeze_loaded_heap
from ..exceptions import DeadlineExceeded, ModelStalled, PredictError, ServingError

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = [
    "enter",
    "enter_before_snapshot",
    "exit",
    "predict",
    "runtime_of",
    "stream",
    "web",
]

logger = logging.getLogger("modal_fastapi_kit")

_RUNTIME = "_mfk_runtime"
_BACKEND = "_mfk_backend"
AFTER_SNAPSHOT_HOOKS = ("to_device", "warmup")


def runtime_of(instance: Any) -> ModelRuntime:
    """The container instance's runtime, created on first use."""
    runtime: ModelRuntime | None = vars(instance).get(_RUNTIME)
    if runtime is None:
        spec = service_spec(type(instance))
        runtime = ModelRuntime(spec, instance=instance, on_stall=_stop_taking_inputs)
        setattr(instance, _RUNTIME, runtime)
    return runtime


async def enter_before_snapshot(instance: Any) -> None:
    await runtime_of(instance).start(("load",), final=False)


async def enter(instance: Any, *, after_snapshot: bool) -> None:
    await runtime_of(instance).start(AFTER_SNAPSHOT_HOOKS if after_snapshot else LOAD_HOOKS)
    freeze_loaded_heap()  # the container is ours: see _heap.py


async def exit(instance: Any) -> None:
    backend: LocalBackend | None = vars(instance).get(_BACKEND)
    if backend is not None:
        await backend.stop()
    runtime: ModelRuntime | None = vars(instance).get(_RUNTIME)
    if runtime is not None:
        await runtime.stop()


async def predict(instance: Any, items: list[Wire]) -> list[Wire]:
    """One outcome envelope per request envelope, in order."""
    runtime = runtime_of(instance)
    model = runtime.spec.request_model
    requests = [decode_request(model, item) for item in items]
    readable = [r for r in requests if not isinstance(r, ServingError)]
    try:
        outcomes = iter(await runtime.run_batch(readable) if readable else [])
        return [_outcome(r if isinstance(r, ServingError) else next(outcomes)) for r in requests]
    finally:
        _close_files(readable)


async def stream(instance: Any, item: Wire) -> AsyncIterator[Wire]:
    """The chunk envelopes of one streaming request; the last one may be its error."""
    runtime = runtime_of(instance)
    request = decode_request(runtime.spec.request_model, item)
    if isinstance(request, ServingError):
        yield encode_chunk(request)
        return
    try:
        async with contextlib.aclosing(_stream(instance, runtime, request)) as envelopes:
            async for envelope in envelopes:
                yield envelope
    finally:
        _close_files([request])


async def _stream(instance: Any, runtime: ModelRuntime, request: Any) -> AsyncGenerator[Wire, None]:
    config = runtime.config
    backend = await _backend_of(instance, runtime)
    loop = asyncio.get_running_loop()
    try:
        future = backend.submit(request, deadline=loop.time() + config.first_chunk_seconds)
        chunks = await asyncio.wait_for(future, config.first_chunk_seconds)
    except ServingError as exc:
        yield encode_chunk(exc)
        return
    except TimeoutError:
        yield encode_chunk(DeadlineExceeded("no first chunk within first_chunk_timeout"))
        return
    timeout = config.first_chunk_seconds
    try:
        while True:
            try:
                chunk = await chunks.next(timeout)
            except StopAsyncIteration:
                return
            except ServingError as exc:
                yield encode_chunk(exc)
                return
            yield _chunk(chunk)
            timeout = config.chunk_timeout
    finally:
        chunks.close()  # the caller stopped reading: stop the generator


def _outcome(outcome: Any) -> Wire:
    """``encode_outcome``, or the item's error when its answer cannot be sent (a file that
    cannot be read): the batch's other items keep their answers."""
    try:
        return encode_outcome(outcome)
    except Exception as exc:
        logger.exception("could not send an answer to the web tier")
        return encode_outcome(_unsendable(exc))


def _chunk(chunk: Any) -> Wire:
    try:
        return encode_chunk(chunk)
    except Exception as exc:
        logger.exception("could not send a chunk to the web tier")
        return encode_chunk(_unsendable(exc))


def _unsendable(exc: Exception) -> PredictError:
    error = PredictError(
        f"the answer could not be sent to the web tier: {type(exc).__name__}: {exc}"
    )
    error.__cause__ = exc
    return error


def _close_files(requests: list[Any]) -> None:
    """Release what backs the requests' files (temporary copies made for ``path``)."""
    for request in requests:
        for file in files_in(request):
            file.close()


def web(instance: Any) -> FastAPI:
    """The colocated container's app: the router on the runtime ``@modal.enter`` loaded."""
    from .._assembly import service_app, service_router

    runtime = runtime_of(instance)
    backend = LocalBackend(runtime.spec, runtime=runtime)
    return service_app(runtime.spec, service_router(runtime.spec, backend))


async def _backend_of(instance: Any, runtime: ModelRuntime) -> LocalBackend:
    backend: LocalBackend | None = vars(instance).get(_BACKEND)
    if backend is None:
        backend = LocalBackend(runtime.spec, runtime=runtime)
        setattr(instance, _BACKEND, backend)
        await backend.start()
    return backend


def _stop_taking_inputs(error: ModelStalled) -> None:
    """On a stalled model, ask Modal to send this container no more inputs."""
    import modal

    if modal.is_local():
        return
    from modal.experimental import stop_fetching_inputs

    async def stop() -> None:
        try:
            await stop_fetching_inputs.aio()
        except Exception:
            logger.exception("could not stop this container taking inputs")
        else:
            logger.error("this container takes no more inputs: %s", error)

    asyncio.get_running_loop().create_task(stop())
