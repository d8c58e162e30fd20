"""Run a generated GPU class the way a Modal container runs it, offline, with Modal's own code.

``ModalContainer`` builds the class instance with ``get_user_class_instance``, enters it with
``ImportedClass.lifecycle_context`` (pre-snapshot ``@enter``, post-snapshot ``@enter``, and at
the end ``@exit``) on a ``UserCodeEventLoop``, and calls methods through
``get_finalized_functions`` on that same loop, as ``modal._container_entrypoint`` does. A
colocated class's app has its lifespan run by Modal's ``LifespanManager``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

from modal._runtime import user_code_imports
from modal._runtime.asgi import LifespanManager
from modal._runtime.task_lifecycle_manager import TaskLifecycleManager
from modal._runtime.user_code_event_loop import UserCodeEventLoop
from modal._utils.async_utils import synchronizer
from modal.cls import _Cls
from modal_proto import api_pb2

from modal_fastapi_kit._jobs.modal import jobs_class_name
from modal_fastapi_kit._modal.build import deployment


class ModalContainer:
    """One container of a generated class; use as a context manager (enter ... exit)."""

    def __init__(self, server_cls: type, *, jobs: bool = False) -> None:
        """The container of ``server_cls``'s GPU class, or (``jobs``) of its jobs class."""
        built = deployment(server_cls)
        raw = synchronizer._translate_in(built.jobs_cls if jobs else built.gpu_cls)
        self.cls = _Cls._from_local(
            raw._get_user_cls(), raw._get_app(), raw._get_class_service_function()
        )
        self.partials = self.cls._get_partial_functions()
        self.instance = user_code_imports.get_user_class_instance(self.cls, (), {})
        name = jobs_class_name(server_cls.__name__) if jobs else server_cls.__name__
        self.function_def = api_pb2.Function(
            module_name=server_cls.__module__,
            implementation_name=f"{name}.*",
            method_definitions={name: api_pb2.MethodDefinition() for name in self.partials},
        )
        self.service = user_code_imports.ImportedClass(
            user_cls_instance=self.instance,
            app=raw._get_app(),
            service_deps=None,
            _partial_functions=self.partials,
            function_def=self.function_def,
        )
        self.lifecycle = TaskLifecycleManager("ta-test", "fu-test", self.function_def, None, None)
        self._stack = contextlib.ExitStack()
        self.loop: UserCodeEventLoop

    def __enter__(self) -> ModalContainer:
        self.loop = self._stack.enter_context(UserCodeEventLoop())
        self._stack.enter_context(self.service.lifecycle_context(self.loop, self.lifecycle))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def call(self, method: str, *args: Any) -> Any:
        """Call a (non-generator) method as Modal's ``call_function`` does, on the loop."""
        function = self._finalized(method)
        assert not function.is_generator
        if function.is_async:
            return self.loop.run(function.callable(*args))
        return function.callable(*args)

    def stream(self, method: str, *args: Any) -> Iterator[Any]:
        """Iterate a generator method on the loop, one item at a time."""
        function = self._finalized(method)
        assert function.is_generator and function.is_async
        generator = function.callable(*args)
        try:
            while True:
                try:
                    yield self.loop.run(generator.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self.loop.run(generator.aclose())

    def run(self, coroutine: Any) -> Any:
        return self.loop.run(coroutine)

    @contextlib.contextmanager
    def web_app(self, method: str = "mfk_web") -> Iterator[Any]:
        """The colocated app, its lifespan started and stopped by Modal's LifespanManager."""
        with self.serving(self.partials[method].raw_f(self.instance)) as app:
            yield app

    @contextlib.contextmanager
    def serving(self, app: Any) -> Iterator[Any]:
        """Run ``app``'s lifespan on this container's loop, as Modal does for a web endpoint."""
        lifespan = LifespanManager(app, {})
        self.loop.create_task(lifespan.background_task())
        self.loop.run(lifespan.lifespan_startup())
        try:
            yield app
        finally:
            self.loop.run(lifespan.lifespan_shutdown())

    def handle(self) -> Any:
        """A stand-in for the deployed ``modal.Cls``: ``mfk_predict.remote.aio`` and
        ``mfk_stream.remote_gen.aio`` run this container's methods on its loop (one input per
        call, as Modal sends a batch of one when nothing else is waiting)."""
        methods: dict[str, Any] = {}
        if "mfk_predict" in self.partials:
            predict = self._finalized("mfk_predict")
            batched = bool(self.partials["mfk_predict"].params.batch_max_size)

            async def remote(payload: Any) -> Any:
                answer = await predict.callable([payload] if batched else payload)
                return answer[0] if batched else answer

            methods["mfk_predict"] = SimpleNamespace(remote=SimpleNamespace(aio=remote))
        if "mfk_stream" in self.partials:
            stream = self._finalized("mfk_stream")
            methods["mfk_stream"] = SimpleNamespace(
                remote_gen=SimpleNamespace(aio=lambda payload: stream.callable(payload))
            )
        return lambda: SimpleNamespace(**methods)

    def _finalized(self, method: str) -> Any:
        functions = self.service.get_finalized_functions(self.function_def, None)
        return functions[method]
