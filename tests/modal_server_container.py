"""Run a generated Modal Server the way a Modal Server container runs it, offline, with Modal's
own code (modal 1.6.4 ``_container_entrypoint.run_server``).

``ModalServerContainer`` builds ``ImportedServer`` (what ``import_server_service`` returns),
enters it with its ``lifecycle_context`` on a ``UserCodeEventLoop`` (the ``@enter`` hooks,
and at the end the ``@exit`` hooks), and stands in for ``call_server`` (the loop running until
SIGTERM) with ``serve_while(fn)``: the loop runs while ``fn`` runs in a thread, the way an HTTP
client reaches the container while Modal's loop waits.

The function definition has no ``http_config``: with one, Modal's ``_FlashContainerEntry``
tells Modal's workers the container is ready (``ContainerServerLifecycleReady``), which needs a
Modal worker. That call comes after the enter hooks return, so what the port does before it is
what is tested here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

from modal._runtime import user_code_imports
from modal._runtime.task_lifecycle_manager import TaskLifecycleManager
from modal._runtime.user_code_event_loop import UserCodeEventLoop
from modal._utils.async_utils import synchronizer
from modal_proto import api_pb2

from modal_fastapi_kit._modal.build import deployment

T = TypeVar("T")


class ModalServerContainer:
    """One Server container of a ``topology="server"`` class; a context manager."""

    def __init__(self, server_cls: type) -> None:
        built = deployment(server_cls)
        assert built.server is not None, "not a topology='server' class"
        raw = synchronizer._translate_in(built.server)
        self.function_def = api_pb2.Function(
            module_name=server_cls.__module__,
            implementation_name=server_cls.__name__,
            is_server=True,
        )
        self.instance = raw._get_user_cls()()  # as import_server_service: user_cls()
        self.service = user_code_imports.ImportedServer(
            user_cls_instance=self.instance,
            app=raw._get_app(),
            service_deps=None,
            function_def=self.function_def,
        )
        self.lifecycle = TaskLifecycleManager("ta-test", "fu-test", self.function_def, None, None)
        self._stack = contextlib.ExitStack()
        self.loop: UserCodeEventLoop

    def __enter__(self) -> ModalServerContainer:
        self.loop = self._stack.enter_context(UserCodeEventLoop())
        self._stack.enter_context(self.service.lifecycle_context(self.loop, self.lifecycle))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def serve_while(self, fn: Callable[[], T]) -> T:
        """Run the container's loop (as ``call_server`` does) while ``fn`` runs in a thread."""
        result: T = self.loop.run(asyncio.to_thread(fn))
        return result

    def run(self, coroutine: Any) -> Any:
        return self.loop.run(coroutine)
