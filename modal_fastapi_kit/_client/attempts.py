"""One call's attempts: the request it sends, and after each failure whether to try again.

Retries, within ``retry_for`` seconds from the start of the call, follow the ``Retry`` of
the error's code (``ERROR_CODES``):

- ``SAFE`` (the input was not run: loading, queue full, stalled, shutting down, a backend
  that cannot be reached, a connection that could not be made): after ``Retry-After``, else
  after a short backoff that doubles;
- ``UNSAFE`` (it may have run: 500, 502, 504, a timeout, a connection that broke after the
  request was sent): only with ``retry_unsafe=True``;
- ``NEVER`` (the same request gets the same answer: bad input, no key, a model that failed
  to load): never.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import httpx

from .._protocol import REQUEST_ID_HEADER
from ..exceptions import (
    ERROR_CODES,
    BackendUnavailable,
    DeadlineExceeded,
    Retry,
    ServingError,
    UpstreamError,
)
from .answers import error_from_answer
from .files import Body
from .options import ClientOptions

__all__ = ["FIRST_BACKOFF", "MAX_BACKOFF", "Attempts", "unsent"]

FIRST_BACKOFF = 0.2  # seconds before a retry that no Retry-After times; doubled each time
MAX_BACKOFF = 2.0


class Attempts:
    """The attempts of one call: its request id and headers, and its retry decisions.

    The transports (blocking and ``asyncio``) send ``request()``, and on a failure wait the
    seconds ``after_answer`` / ``after_transport_error`` return, or raise what they raise.
    ``clock`` is the monotonic clock the budget is measured on.
    """

    def __init__(
        self,
        options: ClientOptions,
        request_id: str | None,
        body: Body,
        *,
        streaming: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.options = options
        self.request_id = request_id or os.urandom(16).hex()
        self._clock = clock
        self.started = self._clock()
        self.attempts = 0
        self._backoff = FIRST_BACKOFF
        self.body = body
        if streaming:
            accept = "text/event-stream"
        elif options.service.answers_file:
            accept = "*/*"
        else:
            accept = "application/json"
        self.headers = {
            **options.headers,
            "content-type": body.content_type,  # a multipart boundary stays the same
            "accept": accept,
            REQUEST_ID_HEADER: self.request_id,
        }

    def request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        """The next attempt's request: the same body each time (a file part is rewound)."""
        self.attempts += 1
        timeout = self.options.timeout
        return http.build_request(
            "POST",
            self.options.url,
            headers=self.headers,
            timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
            **self.body.request_args(),
        )

    def answered_id(self, response: httpx.Response) -> str:
        """The id the server answered under (its ``X-Request-ID``), else the one sent."""
        return response.headers.get(REQUEST_ID_HEADER) or self.request_id

    def after_answer(self, response: httpx.Response, body: bytes) -> float:
        """Seconds to wait before trying again after an error answer; raises its error when
        the call is over."""
        error = error_from_answer(
            response.status_code, body, response.headers, self.answered_id(response)
        )
        return self._again(error, answered=True)

    def after_transport_error(self, exc: httpx.TransportError) -> float:
        """Seconds to wait before trying again after ``exc``; raises the kit's error for it
        when the call is over."""
        try:
            return self._again(self._transport_error(exc), answered=False)
        except ServingError as error:
            raise error from exc

    def _again(self, error: ServingError, *, answered: bool) -> float:
        retry = ERROR_CODES[error.code].retry
        if not (retry is Retry.SAFE or (retry is Retry.UNSAFE and self.options.retry_unsafe)):
            raise error
        # Retry-After is the server's word on when to come back; without it, back off.
        wait: float
        if answered and error.retry_after is not None:
            wait = float(error.retry_after)
        else:
            wait = self._backoff
            self._backoff = min(2 * self._backoff, MAX_BACKOFF)
        if self._clock() - self.started + wait > self.options.retry_for:
            raise error
        return wait

    def _transport_error(self, exc: httpx.TransportError) -> ServingError:
        shown = self.options.shown
        rid = self.request_id
        if unsent(exc):
            return BackendUnavailable(
                f"cannot connect to {shown}: {type(exc).__name__}: {exc}",
                retry_after=None,  # no answer: no word from the server on when
                request_id=rid,
            )
        if isinstance(exc, httpx.TimeoutException):
            return DeadlineExceeded(
                f"no answer from {shown} within the client's timeout ({type(exc).__name__}); "
                "raise timeout= if the service may take longer",
                retry_after=None,
                request_id=rid,
            )
        why = (
            "retries ran out"
            if self.options.retry_unsafe
            else "it may have run, so it was not retried (pass retry_unsafe=True if "
            "running it twice is harmless)"
        )
        return UpstreamError(
            f"the connection to {shown} broke after the request was sent "
            f"({type(exc).__name__}: {exc}); {why}",
            retry_after=None,
            request_id=rid,
        )


def unsent(exc: httpx.TransportError) -> bool:
    """Whether ``exc`` happened before any of the request was sent."""
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
