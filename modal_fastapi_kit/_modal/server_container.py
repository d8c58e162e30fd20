"""What a Modal Server container of a ``topology="server"`` class does (``@app.server``).

How Modal runs a Server container (modal 1.6.4, ``modal/_container_entrypoint.py``
``run_server`` and ``modal/_runtime/user_code_imports.py`` ``_LifecycleManager``): it calls the
``@modal.enter`` methods one after the other, an ``async`` one on the container's event loop
until it returns; then it tells Modal the container is ready (``_FlashContainerEntry.enter`` ->
``ContainerServerLifecycleReady``) and runs that same loop until SIGTERM (``call_server``);
then it calls the ``@modal.exit`` methods. So the enter hook must return, and whatever it
leaves running on the loop keeps running while the container serves.

- ``enter``: the load hooks (``load``, ``to_device``, ``warmup``; after a memory snapshot only
  the last two), then uvicorn on ``0.0.0.0:port`` as a task on the container's loop, with the
  kit's app on a ``LocalBackend`` over the loaded runtime (as the colocated topology does). It
  returns once uvicorn listens: the port opens only when the model is ready, and Modal's
  "ready" follows.
- ``exit``: uvicorn stops listening, lets in-flight requests finish for at most the Server's
  ``exit_grace_period``, runs the app's shutdown (the batcher drains), then the model unloads.

Modal owns the container's signals (SIGTERM starts the exit hooks), so uvicorn installs none.
uvicorn is imported here only when a Server container starts: it is in the image of a
``topology="server"`` class only (``build.image_spec``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from .._backends.local import LocalBackend
from . import container

if TYPE_CHECKING:
    import uvicorn

__all__ = ["HOST", "enter", "exit"]

HOST = "0.0.0.0"  # Modal routes to the port from outside the container
_SERVING = "_mfk_serving"
_POLL = 0.01  # seconds between looks at uvicorn's ``started``


def _server(config: uvicorn.Config) -> uvicorn.Server:
    """uvicorn's server, leaving signals to Modal."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            yield

    return Server(config)


async def enter(instance: Any, *, after_snapshot: bool) -> None:
    """Load the model, then serve the kit's app on the port; return once it listens."""
    import uvicorn

    from .._assembly import service_app, service_router

    await container.enter(instance, after_snapshot=after_snapshot)
    runtime = container.runtime_of(instance)
    spec, config = runtime.spec, runtime.config
    backend = LocalBackend(spec, runtime=runtime)
    server = _server(
        uvicorn.Config(
            service_app(spec, service_router(spec, backend)),
            host=HOST,
            port=config.port,
            lifespan="on",
            log_config=None,  # the container's logging is the user's and Modal's
            access_log=False,
            proxy_headers=False,  # the kit's origin lock handles forwarded headers
            timeout_graceful_shutdown=config.exit_grace_seconds,
        )
    )
    task = asyncio.get_running_loop().create_task(server.serve(), name="mfk.server")
    while not server.started:
        if task.done():  # could not listen (the port is taken) or the app failed to start
            task.result()
            raise RuntimeError(f"{spec.name} could not serve on {HOST}:{config.port}")
        await asyncio.sleep(_POLL)
    setattr(instance, _SERVING, (server, task))


async def exit(instance: Any) -> None:
    """Stop listening, drain in-flight requests (within the exit grace period), unload."""
    serving: tuple[uvicorn.Server, asyncio.Task[None]] | None = vars(instance).pop(_SERVING, None)
    if serving is not None:
        server, task = serving
        server.should_exit = True
        await task
    await container.exit(instance)
