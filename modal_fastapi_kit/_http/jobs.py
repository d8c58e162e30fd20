"""The job routes of a service with ``jobs``, beside its predict route (``<route>`` below).

=======================================  ==================================================
``POST <route>/jobs``                    the predict route's body (JSON, multipart, raw);
                                         202 with the job's status, ``Location`` and
                                         ``Retry-After``. ``Idempotency-Key``: the same key
                                         and body answer the same job (with
                                         ``Idempotent-Replayed: true``), another body 422.
                                         ``Webhook-URL``: told when the job ends
``GET <route>/jobs/{id}``                the job's status
``GET <route>/jobs/{id}/result?wait=s``  the answer (JSON, or the file) once it succeeded;
                                         202 with the status while it runs, after waiting
                                         up to ``wait`` seconds (at most ``max_wait``); a
                                         failed job's error with its status and code; 409
                                         canceled, 410 expired
``POST <route>/jobs/{id}/cancel``        cancel it (again: the same answer); its status
=======================================  ==================================================

Every route is behind the service's API keys, and a job is answered only to the key that
submitted it: to another, its id does not exist (404 ``job_not_found``). The routes know only
the ``JobService`` (``_jobs/service.py``): the same routes serve ``mfk serve``'s SQLite jobs
and Modal's spawned calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from fastapi import Query, Request
from fastapi.responses import JSONResponse, Response

from .._core.spec import RouteNames, ServiceSpec
from .._core.wire import encode_request
from .._file import files_in
from .._jobs.service import JobService, Submission, job_canceled, owner_of
from .._jobs.status import JobInfo, JobState, JobStatus, job_links
from .._jobs.webhooks import check_webhook_address, check_webhook_url
from .._protocol import IDEMPOTENCY_HEADER, REPLAYED_HEADER, WEBHOOK_HEADER, idempotency_key_ok
from ..exceptions import ErrorCode, InputError
from .auth import presented_key
from .endpoint import annotate_item, answer_response, prepare_endpoint, url_fetcher
from .errors import REQUEST_ID_HEADER, ErrorBody, error_response, failure_response, request_id
from .file_openapi import UPLOAD_ERRORS, FileBody, file_answer_responses, upload_docs
from .upload_call import take_uploads
from .uploads import close_files
from .waiting import ClientGone, wait_for_disconnect

__all__ = ["add_job_routes", "job_route_paths"]

RETRY_AFTER = "1"  # seconds a client waits before it asks about a job again
T = TypeVar("T")

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No valid API key (when auth='api-key')"},
    404: {"model": ErrorBody, "description": "No such job for this API key"},
}


def add_job_routes(
    router: Any, spec: ServiceSpec, jobs: JobService, dependencies: list[Any]
) -> RouteNames:
    """Add the four job routes to ``router``; their names."""
    config = spec.config
    options = config.jobs
    assert options is not None
    base = f"{config.route}/jobs"
    names = {
        kind: f"{config.name}.jobs.{kind}" for kind in ("submit", "status", "result", "cancel")
    }
    checks_keys = config.auth == "api-key"

    def add(kind: str, path: str, endpoint: Any, method: str, summary: str, **more: Any) -> None:
        prepare_endpoint(endpoint, spec)
        router.add_api_route(
            path,
            endpoint,
            methods=[method],
            name=names[kind],
            summary=f"{spec.name}: {summary}",
            tags=[spec.name],
            dependencies=dependencies,
            **more,
        )

    def owner(request: Request) -> str:
        if not checks_keys:
            return ""
        headers = request.headers
        return owner_of(presented_key(headers.get("authorization"), headers.get("x-api-key")))

    def jobs_url(request: Request) -> str:
        return str(request.url_for(names["submit"]))

    def answer(request: Request, info: JobInfo, rid: str, status: int = 200) -> JSONResponse:
        document = info.status(job_links(jobs_url(request), info.id))
        headers = {REQUEST_ID_HEADER: rid}
        if not info.state.done:
            headers["retry-after"] = RETRY_AFTER
        return JSONResponse(document.model_dump(mode="json"), status_code=status, headers=headers)

    takes_files = bool(spec.files)
    fetch = url_fetcher(spec)

    async def submit(request: Request, item: Any) -> Response:
        rid = request_id(request)
        try:
            key = _idempotency_key(request.headers.get(IDEMPOTENCY_HEADER))
            webhook = await _webhook(request.headers.get(WEBHOOK_HEADER), options)
            if takes_files:
                await fetch(item)
                wire = await asyncio.to_thread(encode_request, item)
            else:
                wire = encode_request(item)
            submission = Submission(
                owner=owner(request),
                request_id=rid,
                jobs_url=jobs_url(request),
                idempotency_key=key,
                webhook=webhook,
            )
            info, replayed = await jobs.submit(submission, wire)
        except Exception as exc:
            return failure_response(exc, rid)
        finally:
            if takes_files:
                close_files(files_in(item))
        response = answer(request, info, rid, status=202)
        response.headers["location"] = job_links(jobs_url(request), info.id).status
        response.headers["retry-after"] = RETRY_AFTER
        if replayed:
            response.headers[REPLAYED_HEADER] = "true"
        return response

    annotate_item(submit, spec.request_model)
    take_uploads(submit, spec)
    submit_errors = {
        **_ERRORS,
        413: {"model": ErrorBody, "description": "Body over the size limit (max_body_bytes)"},
        422: {"description": "Validation failed, a webhook refused, or a reused key"},
        503: {"model": ErrorBody, "description": "max_pending jobs queued or running"},
        **(UPLOAD_ERRORS if takes_files else {}),
    }
    submit_errors.pop(404)
    add(
        "submit",
        base,
        submit,
        "POST",
        "submit a job",
        status_code=202,
        response_model=JobStatus,
        responses=submit_errors,
        openapi_extra=upload_docs(spec) if takes_files else None,
    )

    async def status(request: Request, job_id: str) -> Response:
        rid = request_id(request)
        try:
            info = await jobs.status(job_id, owner(request))
        except Exception as exc:
            return failure_response(exc, rid)
        return answer(request, info, rid)

    async def result(
        request: Request,
        job_id: str,
        wait: float = Query(
            0.0,
            ge=0.0,
            description=f"seconds to wait for the job to end (at most {options.max_wait:g})",
        ),
    ) -> Response:
        rid = request_id(request)
        try:
            seconds = min(wait, options.max_wait)
            looked = jobs.result(job_id, owner(request), seconds)
            info, value = await (_unless_gone(request, looked) if seconds > 0 else looked)
            if info.state is JobState.CANCELED:
                raise job_canceled(job_id)
            if info.state is JobState.FAILED and info.error is not None:
                return error_response(info.error.exception(), rid)
        except ClientGone:
            return Response(status_code=499)  # the client left mid-wait; nobody reads this
        except Exception as exc:
            return failure_response(exc, rid)
        if value is None:  # not done yet
            return answer(request, info, rid, status=202)
        return answer_response(spec, value, rid)

    result_responses: dict[int | str, dict[str, Any]] = {
        **_ERRORS,
        202: {"model": JobStatus, "description": "Not done yet: the job's status"},
        409: {"model": ErrorBody, "description": "The job was canceled"},
        410: {"model": ErrorBody, "description": "The job's result is past its retention"},
        500: {"model": ErrorBody, "description": "The job failed (its own status and code)"},
    }
    if spec.answers_file:
        result_responses.update(file_answer_responses())

    async def cancel(request: Request, job_id: str) -> Response:
        rid = request_id(request)
        try:
            info = await jobs.cancel(job_id, owner(request))
        except Exception as exc:
            return failure_response(exc, rid)
        return answer(request, info, rid)

    own = f"{base}/{{job_id}}"
    add("status", own, status, "GET", "a job's status", response_model=JobStatus, responses=_ERRORS)
    add(
        "result",
        f"{own}/result",
        result,
        "GET",
        "a job's result",
        response_model=None if spec.answers_file else spec.response_model,
        response_class=FileBody if spec.answers_file else JSONResponse,
        responses=result_responses,
    )
    add(
        "cancel",
        f"{own}/cancel",
        cancel,
        "POST",
        "cancel a job",
        response_model=JobStatus,
        responses=_ERRORS,
    )
    return RouteNames(exclusive=tuple(names.values()))


async def _unless_gone(request: Request, waiting: Coroutine[Any, Any, T]) -> T:
    """``waiting``'s answer; ``ClientGone`` (and ``waiting`` stopped) when the client
    disconnects first: a long-poll whose client left holds nothing."""
    loop = asyncio.get_running_loop()
    task = loop.create_task(waiting)
    watcher = loop.create_task(wait_for_disconnect(request.receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not task.done():
        task.cancel()
        await asyncio.wait({task})
        raise ClientGone
    return task.result()


def job_route_paths(spec: ServiceSpec) -> list[str]:
    """The job routes as ``mfk check`` lists them."""
    base = f"{spec.config.route}/jobs"
    return [
        f"POST {base}",
        f"GET {base}/{{id}}",
        f"GET {base}/{{id}}/result",
        f"POST {base}/{{id}}/cancel",
    ]


def _idempotency_key(given: str | None) -> str | None:
    if given is None:
        return None
    if not idempotency_key_ok(given):
        raise InputError(
            f"Idempotency-Key {given[:80]!r} is invalid: use 1 to 255 printable ASCII "
            "characters without spaces, e.g. a UUID",
            status_code=422,
            code=ErrorCode.VALIDATION_FAILED,
        )
    return given


async def _webhook(given: str | None, options: Any) -> str | None:
    """The submission's ``Webhook-URL``, checked (its scheme, and where it resolves to)."""
    if given is None or not given.strip():
        return None
    url = check_webhook_url(given.strip(), allow_private=options.allow_private_webhooks)
    await check_webhook_address(url, allow_private=options.allow_private_webhooks)
    return url
