"""``ModalBackend``: the router's backend when the model runs in the GPU class on Modal.

Inside the deployed app (split topology) it is handed the app's own class. Anywhere else,
``X.router(backend="modal")`` looks the deployed class up by name
(``modal.Cls.from_name(app_name, class_name)``); ``/readyz`` turns 200 once that lookup
succeeds, which wakes no GPU. Each request is one ``.remote.aio`` call carrying the request's
JSON, and its files as bytes beside it (``_core.wire``; read in a thread, a spooled upload may
be large), answered with an envelope: the result, or that item's error (an ``InputError``
keeps its 4xx). A streaming service's requests are ``.remote_gen.aio`` calls
whose chunk envelopes go to the request's ``ItemStream``; closing the stream (the client left)
stops reading the remote generator. Nothing is retried here: Modal retries failed inputs on
the GPU class when ``retries`` is set, and a web request is never resent.

Failures, as the router answers them:

=========================================  ====================================
no or rejected Modal credentials           503 (``BackendUnavailable``)
the app or class is not deployed           503 (``BackendUnavailable``)
cannot reach Modal                         503 with ``Retry-After``
Modal failed to run the input              502 with ``Retry-After`` (``UpstreamError``)
the GPU class ran past its ``timeout``     504 (``DeadlineExceeded``)
``predict`` raised in the container        500 with the request id (``PredictError``)
the model refused the input                its ``InputError`` status and message
the GPU container's model is stalled       503 (``ModelStalled``)
=========================================  ====================================

Cancelling a request's future stops waiting for it; an input Modal already started may still
run to completion.

With ``jobs``, ``job_service()`` answers a ``ModalJobs`` over the app's jobs class
``<Class>_jobs``, its webhook function ``<Class>_webhooks`` and its ``modal.Dict``: the
deployed app's own, or looked up by name as the GPU class is.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .._core.recorder import Trace
from .._core.spec import ServiceSpec
from .._core.state import LoadState
from .._core.streams import ItemStream
from .._core.wire import (
    PREDICT_METHOD,
    STREAM_METHOD,
    Wire,
    decode_chunk,
    decode_outcome,
    encode_request,
)
from ..exceptions import (
    BackendUnavailable,
    DeadlineExceeded,
    ErrorCode,
    NotReadyError,
    PredictError,
    QueueFullError,
    ServingError,
    UpstreamError,
)

if TYPE_CHECKING:
    from .._jobs.modal import ModalJobs

__all__ = ["ModalBackend", "map_modal_error"]

logger = logging.getLogger("modal_fastapi_kit")

CREDENTIALS_HELP = (
    "run `modal token new`, or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET "
    "(create a token at https://modal.com/settings/tokens)"
)
DEFAULT_LOOKUP_RETRY = 10.0  # seconds before the first new lookup after a failed one
FIRST_RESEND_DELAY = 0.1  # seconds before sending again a request Modal never received
MAX_RESEND_DELAY = 2.0
MAX_LOOKUP_RETRY = 300.0


class ModalBackend:
    """Calls the deployed GPU class; implements the ``Backend`` protocol.

    ``handle``: the ``modal.Cls`` to call (the deployed app's own). Without it the class is
    looked up as ``modal.Cls.from_name(app_name, class_name, environment_name=...)``, by default
    the service's ``name`` and the Python class name. ``jobs_handle`` / ``webhook_handle``:
    the app's jobs class and webhook function (looked up by name likewise without them).
    """

    def __init__(
        self,
        spec: ServiceSpec,
        *,
        handle: Any = None,
        app_name: str | None = None,
        class_name: str | None = None,
        environment_name: str | None = None,
        lookup_retry: float = DEFAULT_LOOKUP_RETRY,
        jobs_handle: Any = None,
        webhook_handle: Any = None,
    ) -> None:
        self.spec = spec
        self.config = spec.config
        self.app_name = app_name or spec.config.name
        self.class_name = class_name or spec.name
        self.environment_name = environment_name
        self.lookup_retry = lookup_retry
        self._handle = handle
        self._jobs_handle = jobs_handle
        self._webhook_handle = webhook_handle
        self._obj: Any = None
        self._state = LoadState.CREATED
        self._error: str | None = None
        self._lookup: asyncio.Task[None] | None = None
        self._calls: set[asyncio.Task[Any]] = set()
        self._looked_up = asyncio.Event()

    @property
    def service_name(self) -> str:
        return self.spec.name

    @property
    def state(self) -> LoadState:
        return self._state

    @property
    def error(self) -> str | None:
        return self._error

    @property
    def queue_depth(self) -> int:
        """Calls in flight to the GPU class."""
        return len(self._calls)

    @property
    def target(self) -> str:
        return f"class {self.class_name!r} of Modal app {self.app_name!r}"

    async def start(self) -> None:
        if self._state is not LoadState.CREATED:
            return
        if self._handle is not None:
            self._obj = self._handle()
            self._state = LoadState.READY
            self._looked_up.set()
            return
        self._state = LoadState.LOADING
        self._lookup = asyncio.get_running_loop().create_task(
            self._look_up(), name=f"modal_fastapi_kit.lookup[{self.class_name}]"
        )

    async def wait_looked_up(self) -> None:
        """Wait until the first lookup finished, successfully or not."""
        await self._looked_up.wait()

    async def _look_up(self) -> None:
        import modal

        delay = self.lookup_retry
        while True:
            handle = modal.Cls.from_name(
                self.app_name, self.class_name, environment_name=self.environment_name
            )
            try:
                await handle.hydrate.aio()
            except Exception as exc:
                self._state = LoadState.FAILED
                error = map_modal_error(exc, self)
                self._error = error.internal or error.detail
                logger.error("looking up the %s failed: %s", self.target, self._error)
                self._looked_up.set()
                if isinstance(exc, modal.exception.AuthError):
                    return  # credentials do not appear by waiting
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_LOOKUP_RETRY)
                continue
            self._obj = handle()
            self._error = None
            self._state = LoadState.READY
            self._looked_up.set()
            logger.info("found the %s", self.target)
            return

    def submit(
        self, item: Any, *, deadline: float, trace: Trace | None = None
    ) -> asyncio.Future[Any]:
        if self._state is not LoadState.READY or self._obj is None:
            if self._state is LoadState.FAILED:
                raise BackendUnavailable(UNAVAILABLE, internal=f"the {self.target}: {self._error}")
            if self._state is LoadState.STOPPED:
                raise NotReadyError("the server is shutting down", code=ErrorCode.SHUTTING_DOWN)
            raise NotReadyError(f"still looking up the {self.target}; retry shortly")
        if len(self._calls) >= self.config.max_queue_size:
            raise QueueFullError(
                f"the queue is full ({self.config.max_queue_size} requests in flight); "
                "retry shortly"
            )
        loop = asyncio.get_running_loop()
        if self.spec.streaming:
            stream = ItemStream()
            reader = self._track(loop.create_task(self._read_stream(item, stream)))
            stream.on_close(reader.cancel)
            future: asyncio.Future[Any] = loop.create_future()
            future.set_result(stream)
            return future
        return self._track(loop.create_task(self._call(item, deadline, trace)))

    async def _payload(self, item: Any) -> Wire:
        """The request's wire form; a service with File fields reads its files in a thread."""
        if self.spec.files:
            return await asyncio.to_thread(encode_request, item)
        return encode_request(item)

    def _track(self, task: asyncio.Task[Any]) -> asyncio.Task[Any]:
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)
        return task

    async def _call(self, item: Any, deadline: float, trace: Trace | None) -> Any:
        method = getattr(self._obj, PREDICT_METHOD)
        loop = asyncio.get_running_loop()
        payload = await self._payload(item)
        delay = FIRST_RESEND_DELAY
        while True:
            try:
                began = loop.time()
                wire = await method.remote.aio(payload)
                if trace is not None:  # the GPU class's batch is Modal's: only its time shows
                    trace.model_seconds = loop.time() - began
                break
            except Exception as exc:
                # Resend only what provably never reached Modal, and only within the deadline.
                if not _never_sent(exc) or loop.time() + delay >= deadline:
                    raise map_modal_error(exc, self) from exc
                logger.info("%s; sending the request again in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(2 * delay, MAX_RESEND_DELAY)
        outcome = decode_outcome(self.spec.response_model, wire)
        if isinstance(outcome, ServingError):
            raise outcome
        return outcome

    async def _read_stream(self, item: Any, stream: ItemStream) -> None:
        method = getattr(self._obj, STREAM_METHOD)
        model = self.spec.response_model
        try:
            payload = await self._payload(item)
            async for wire in method.remote_gen.aio(payload):
                chunk = decode_chunk(model, wire)
                if isinstance(chunk, ServingError):
                    stream.finish(chunk)
                    return
                stream.put(chunk)
        except asyncio.CancelledError:
            stream.finish(NotReadyError("the stream was stopped", code=ErrorCode.SHUTTING_DOWN))
            raise
        except Exception as exc:
            stream.finish(map_modal_error(exc, self))
        else:
            stream.finish()

    async def healthy(self) -> bool:
        return self._state is LoadState.READY

    def job_service(self) -> ModalJobs | None:
        """The service's jobs on Modal (spawned calls of ``<Class>_jobs``); None without
        ``jobs``. Looks nothing up yet: Modal's handles hydrate on first use."""
        if self.config.jobs is None:
            return None
        import modal

        from .._jobs.modal import (
            ModalJobs,
            jobs_class_name,
            jobs_dict_name,
            webhook_function_name,
        )

        env = self.environment_name
        jobs_cls = self._jobs_handle
        if jobs_cls is None:
            jobs_cls = modal.Cls.from_name(
                self.app_name, jobs_class_name(self.class_name), environment_name=env
            )
        webhooks = self._webhook_handle
        if webhooks is None:
            webhooks = modal.Function.from_name(
                self.app_name, webhook_function_name(self.class_name), environment_name=env
            )
        store = modal.Dict.from_name(
            jobs_dict_name(self.app_name), environment_name=env, create_if_missing=True
        )
        return ModalJobs(
            self.spec,
            jobs_cls=jobs_cls,
            webhooks=webhooks,
            store=store,
            map_error=lambda exc: map_modal_error(exc, self),
            checks_secret=self._jobs_handle is not None,  # in the app: it has the secrets
        )

    def restart_reason(self) -> tuple[str, str] | None:
        return None  # a stalled GPU container fails its own inputs and is replaced by Modal

    async def stop(self) -> None:
        self._state = LoadState.STOPPED
        if self._lookup is not None:
            self._lookup.cancel()
            await asyncio.wait({self._lookup})
        if self._calls:  # drain: in-flight calls finish, within the request deadline
            _, pending = await asyncio.wait(set(self._calls), timeout=self.config.request_timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)


UNAVAILABLE = "the model service is unavailable; retry later"


def map_modal_error(exc: BaseException, backend: ModalBackend) -> ServingError:
    """The ``ServingError`` the router answers for what a Modal call raised.

    The client reads a short message; what Modal said, which app and class were called and
    how to fix it go in ``internal``, for the server's log.
    """
    from modal import exception as modal_errors

    if isinstance(exc, ServingError):  # already the kit's (an envelope's error)
        return exc
    said = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, modal_errors.AuthError | modal_errors.PermissionDeniedError):
        return BackendUnavailable(
            UNAVAILABLE,
            internal=f"Modal did not accept this server's credentials ({said}); {CREDENTIALS_HELP}",
        )
    if isinstance(exc, modal_errors.NotFoundError):
        return BackendUnavailable(
            UNAVAILABLE,
            internal=f"Modal has no {backend.target} ({exc}); deploy it with `mfk deploy "
            "FILE.py`, or pass app_name= / environment_name= to router(backend='modal', ...)",
        )
    if isinstance(exc, modal_errors.FunctionTimeoutError):
        return DeadlineExceeded(
            "the model did not answer in time",
            internal=f"the {backend.target} ran past its Modal timeout={backend.config.timeout}s",
        )
    if isinstance(exc, modal_errors.TimeoutError):
        return DeadlineExceeded("the model did not answer in time", internal=f"Modal: {said}")
    if isinstance(exc, _unreachable()):
        return BackendUnavailable(
            "the model service cannot be reached; retry shortly",
            internal=f"cannot reach Modal ({said})",
        )
    if isinstance(exc, modal_errors.Error):
        return UpstreamError(
            "the model service failed to run the request; retry shortly",
            internal=f"Modal failed to run the request on the {backend.target} ({said})",
        )
    error = PredictError(f"calling the {backend.target} raised {said}")
    error.__cause__ = exc
    return error


def _unreachable() -> tuple[type[BaseException], ...]:
    from modal import exception as modal_errors

    return (
        modal_errors.ConnectionError,
        modal_errors.ServiceError,
        modal_errors.ResourceExhaustedError,
        modal_errors.ClientClosed,
        OSError,
    )


def _never_sent(exc: BaseException) -> bool:
    """Whether ``exc`` proves the input never reached Modal (so sending it again is safe):
    the connection could not be made, or Modal refused it for load before taking it."""
    from modal import exception as modal_errors

    return isinstance(
        exc,
        modal_errors.ConnectionError | modal_errors.ResourceExhaustedError | ConnectionRefusedError,
    )
