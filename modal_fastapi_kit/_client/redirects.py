"""Following Modal's ``303 See Other``: a web call that has not answered within 150 s.

Modal's ingress answers such a call with a 303 whose ``Location`` is the same URL plus a
``__modal_function_call_id`` query parameter; a ``GET`` of it waits again (up to another
150 s, then maybe another 303) for the same call, it never starts another. ``Hops`` makes
those ``GET`` s for one attempt of a call:

- with the attempt's headers (the API key included) on the same origin, without its body
  and the headers that describe one; a hop to another origin carries only the kit's own
  headers (no key, none of ``headers=``);
- each within what is left of the attempt's timeout: the chain is followed as long as the
  call's own ``timeout`` allows, then the call ends with ``DeadlineExceeded``, not retried,
  since the call is still running on Modal and a retry would start another;
- a hop whose connection fails is made again (it starts nothing) after a short backoff.

Any other redirect (301, 302, 307, 308) is not followed: it says the service is elsewhere,
and the error names where.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from .._protocol import REQUEST_ID_HEADER
from ..exceptions import DeadlineExceeded, ServingError, UpstreamError
from .attempts import FIRST_BACKOFF, MAX_BACKOFF, Attempts

__all__ = ["CONNECT_TIMEOUT", "MAX_HOPS", "Hops", "budget_of"]

MAX_HOPS = 1000  # a guard against a server that redirects at once, forever (Modal: 150 s each)
CONNECT_TIMEOUT = 10.0
_KEPT_ACROSS_ORIGINS = ("user-agent", "accept", REQUEST_ID_HEADER)
_BODY_HEADERS = ("content-type", "content-length", "transfer-encoding")


def budget_of(call: Attempts, http: httpx.Client | httpx.AsyncClient) -> float | None:
    """Seconds one attempt may take, redirects included: the client's ``timeout``, else the
    http client's own read timeout (None: no limit)."""
    if call.options.timeout is not None:
        return call.options.timeout
    return http.timeout.read


class Hops:
    """The 303 s of one attempt, started when its first answer arrived; see the module."""

    def __init__(
        self,
        call: Attempts,
        budget: float | None,
        *,
        started: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.call = call
        self.budget = budget
        self.deadline = None if budget is None else started + budget
        self.count = 0  # 303 s followed
        self._clock = clock
        self._backoff = FIRST_BACKOFF
        self._failing_since: float | None = None

    def next(self, response: httpx.Response) -> httpx.Request | None:
        """The ``GET`` that follows ``response`` when it is a 303 with a ``Location``; None
        for any other answer. Raises for another redirect, and once the timeout is spent."""
        status = response.status_code
        location = response.headers.get("location")
        if not location or not 300 <= status <= 399:
            return None
        here = response.request.url
        try:
            there = here.join(location)
        except httpx.InvalidURL:
            return None  # read as the error answer it is
        if status != 303:
            raise UpstreamError(
                f"{response.request.method} {self.call.options.shown} answered {status} "
                f"redirecting to {there}: the service is not at this URL; pass the base_url "
                "it moved to (only a 303, Modal's answer to a long call, is followed)",
                status_code=status,
                retry_after=None,
                request_id=self.call.answered_id(response),
            )
        self.count += 1
        if self.count > MAX_HOPS:
            raise self._too_long(response.request)
        left = self._left(response.request)
        headers = httpx.Headers(response.request.headers)
        for name in _BODY_HEADERS:
            headers.pop(name, None)
        if not _same_origin(here, there):
            headers = httpx.Headers(
                {k: v for k, v in headers.items() if k.lower() in _KEPT_ACROSS_ORIGINS}
            )
        headers["host"] = there.netloc.decode("ascii")
        connect = CONNECT_TIMEOUT if left is None else min(left, CONNECT_TIMEOUT)
        timeouts = httpx.Timeout(left, connect=connect)
        return httpx.Request(
            "GET", there, headers=headers, extensions={"timeout": timeouts.as_dict()}
        )

    def after_error(self, request: httpx.Request, exc: httpx.TransportError) -> float:
        """Seconds to wait before making the hop ``request`` again after ``exc``; raises
        ``DeadlineExceeded`` when the timeout is spent, and past ``retry_for`` seconds of
        failures where there is no timeout."""
        now = self._clock()
        if isinstance(exc, httpx.ReadTimeout):  # the rest of the timeout went by
            raise self._too_long(request) from exc
        if self._failing_since is None:
            self._failing_since = now
        wait = self._backoff
        self._backoff = min(2 * self._backoff, MAX_BACKOFF)
        past_deadline = self.deadline is not None and now + wait >= self.deadline
        if past_deadline:
            raise self._too_long(request) from exc
        if now - self._failing_since + wait > self.call.options.retry_for:
            raise UpstreamError(
                f"the connection to {self.call.options.shown} failed while waiting for the "
                f"answer of a call Modal redirected ({type(exc).__name__}: {exc}); the call "
                "may still be running there",
                retry_after=None,
                request_id=self.call.request_id,
            ) from exc
        return wait

    def answered(self) -> None:
        """A hop got an answer: the next failure starts a new backoff."""
        self._backoff = FIRST_BACKOFF
        self._failing_since = None

    def _left(self, request: httpx.Request) -> float | None:
        """Seconds left of the timeout (None: no timeout); raises once none are."""
        if self.deadline is None:
            return None
        left = self.deadline - self._clock()
        if left <= 0:
            raise self._too_long(request)
        return left

    def _too_long(self, request: httpx.Request) -> ServingError:
        limit = "" if self.budget is None else f" ({self.budget:g} s)"
        times = "once" if self.count == 1 else f"{self.count} times"
        return DeadlineExceeded(
            f"no answer from {self.call.options.shown} within the client's timeout{limit}: "
            f"the call is still running on Modal, which redirected it {times} "
            "(303, every 150 s); raise timeout= if it may take longer, or serve it as a job "
            "(@gpu_service(jobs=True), client.submit(item))",
            retry_after=None,
            request_id=self.call.request_id,
        )


def _same_origin(url: httpx.URL, other: httpx.URL) -> bool:
    """Same scheme, host and port, or the same host moved from http to https."""
    if url.host != other.host:
        return False
    if url.scheme == other.scheme:
        return _port(url) == _port(other)
    return (url.scheme, _port(url), other.scheme, _port(other)) == ("http", 80, "https", 443)


def _port(url: httpx.URL) -> int | None:
    return url.port if url.port is not None else {"http": 80, "https": 443}.get(url.scheme)
