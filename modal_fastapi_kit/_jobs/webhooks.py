"""Signing and delivering the webhook that tells a receiver a job ended.

- ``WebhookSigner``: the ``whsec_...`` secret(s) in ``$MFK_WEBHOOK_SECRET`` (two while one is
  rotated) and the Standard Webhooks headers they make (``standardwebhooks`` signs);
- ``check_webhook_url``: a submission's URL, by its syntax alone (no DNS);
  ``check_webhook_address``: its name resolved and every address checked;
- ``webhook_event``: the id and body of a job's event (``modal_fastapi_kit.webhooks``'s
  ``WebhookEvent``, the receiver's side);
- ``send_once``: one signed POST, to an address the ``AddressGuard`` checked (``_pinned``),
  no redirect followed, no proxy; ``deliver``: every attempt, in one process.

Nothing here raises for a receiver's failure: an ``Attempt`` says what happened, and its
``error`` (a few words for ``WebhookStatus.last_error``) never holds a secret nor an address
a name resolved to.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ipaddress
import math
import os
import re
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, NoReturn

from standardwebhooks.webhooks import Webhook

from .._address_guard import (
    METADATA_ADDRESSES,
    AddressGuard,
    Destination,
    Refused,
    Resolver,
    Unresolvable,
    address_refusal,
)
from .._fetch import shown_url
from .._pinned import Unreachable, default_tls, send_pinned
from ..exceptions import ConfigError, ErrorCode, InputError
from ..webhooks import SECRET_PREFIX, EventType, WebhookEvent
from .options import MAX_WEBHOOK_DELAY, JobOptions
from .status import JobState, JobStatus, WebhookStatus

if TYPE_CHECKING:
    import httpx

__all__ = [
    "ANSWER_BYTES",
    "DEFAULT_WEBHOOK_TIMEOUT",
    "MAX_WEBHOOK_URL",
    "MIN_SECRET_BYTES",
    "Attempt",
    "WebhookSigner",
    "check_webhook_address",
    "check_webhook_url",
    "deliver",
    "retry_delay",
    "send_once",
    "webhook_event",
]

DEFAULT_WEBHOOK_TIMEOUT = 10.0  # seconds one attempt may take, resolution included
MAX_WEBHOOK_URL = 2048  # characters
MIN_SECRET_BYTES = 24  # the Standard Webhooks minimum
ANSWER_BYTES = 4096  # of a receiver's answer, read and thrown away
USER_AGENT = "modal-fastapi-kit (webhook)"
_RESOLVE_TIMEOUT = 10.0  # seconds check_webhook_address waits for DNS
_HOST_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_EVENTS: dict[JobState, EventType] = {
    JobState.SUCCEEDED: "job.succeeded",
    JobState.FAILED: "job.failed",
    JobState.CANCELED: "job.canceled",
}
_MAKE_ONE = (
    "make one with: python -c \"import base64, secrets; print('whsec_' + "
    'base64.b64encode(secrets.token_bytes(32)).decode())"'
)
_PRIVATE_FIX = (
    "give a public https URL, or set JobOptions(allow_private_webhooks=True) for a receiver "
    "inside your network"
)


# -- the secrets ------------------------------------------------------------------------------


class WebhookSigner:
    """The secrets that sign a service's webhooks (one, or two while rotating).

    ``WebhookSigner(["whsec_..."])``, or ``from_environment`` for the variable a service's
    ``JobOptions.webhook_secret_env`` names. Each call is signed by every secret, so a
    receiver that knows either one verifies it. Its ``repr`` shows no secret.
    """

    __slots__ = ("_hooks",)

    def __init__(self, secrets: Sequence[str], *, where: str = "WebhookSigner") -> None:
        if isinstance(secrets, str) or not secrets:
            given = "a str" if isinstance(secrets, str) else "none"
            raise ConfigError(f"{where} takes a list of one or more whsec_... secrets, not {given}")
        self._hooks = tuple(
            Webhook(_secret_key(secret, n, len(secrets), where))
            for n, secret in enumerate(secrets, 1)
        )

    @classmethod
    def from_environment(
        cls, options: JobOptions, environ: Mapping[str, str] | None = None
    ) -> WebhookSigner | None:
        """The signer for ``$<options.webhook_secret_env>`` (comma-separated ``whsec_...``
        secrets), or ``None`` where it is unset or empty. Raises ``ConfigError`` naming the
        variable (never its value) for a malformed secret."""
        env = os.environ if environ is None else environ
        name = options.webhook_secret_env
        secrets = [part.strip() for part in env.get(name, "").split(",")]
        secrets = [part for part in secrets if part]
        return cls(secrets, where=f"${name}") if secrets else None

    @property
    def count(self) -> int:
        """How many secrets sign each call."""
        return len(self._hooks)

    def __repr__(self) -> str:
        return f"WebhookSigner(<{self.count} secret{'s' if self.count > 1 else ''}>)"

    def headers(
        self, msg_id: str, body: bytes, timestamp: datetime | None = None
    ) -> dict[str, str]:
        """The headers of one attempt to send ``body`` as message ``msg_id``, signed at
        ``timestamp`` (now by default; a naive one is UTC)."""
        when = timestamp or datetime.now(timezone.utc)
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(math.floor(when.timestamp())),
            "webhook-signature": " ".join(hook.sign(msg_id, when, body) for hook in self._hooks),
            "content-type": "application/json",
            "user-agent": USER_AGENT,
        }


def _secret_key(secret: object, number: int, count: int, where: str) -> bytes:
    """The key a ``whsec_...`` secret stands for, or ``ConfigError`` naming ``where``."""
    which = f"{where} holds a malformed webhook secret" + (
        f" (the {_ordinal(number)} of {count})" if count > 1 else ""
    )
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        why = f"it does not start with {SECRET_PREFIX!r}"
    else:
        encoded = secret.removeprefix(SECRET_PREFIX)
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            why = f"what follows {SECRET_PREFIX!r} is not base64"
        else:
            if len(key) >= MIN_SECRET_BYTES:
                return key
            why = f"it stands for {len(key)} bytes, under {MIN_SECRET_BYTES}"
    raise ConfigError(
        f"{which}: {why}. A secret is 'whsec_' followed by the base64 of {MIN_SECRET_BYTES} or "
        f"more random bytes (two, comma-separated, while rotating); {_MAKE_ONE}"
    )


def _ordinal(n: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")


# -- the URL ----------------------------------------------------------------------------------


def check_webhook_url(url: str, *, allow_private: bool) -> str:
    """``url``, when a webhook may be sent to it: ``https`` (``http`` only with
    ``allow_private``), a host, no user name or password, at most 2048 characters, not a
    non-public address written as one. Checks the syntax alone (no DNS: see
    ``check_webhook_address``). Raises ``InputError`` 422 ``webhook_refused`` saying why."""
    _parse(url, allow_private)
    return url


async def check_webhook_address(
    url: str, *, allow_private: bool, resolver: Resolver | None = None
) -> None:
    """Resolve ``url``'s host and check every address it gives (loopback, private,
    link-local and metadata addresses are refused, as for a file URL). Raises ``InputError``
    422 ``webhook_refused`` saying why."""
    parsed = _parse(url, allow_private)
    guard = AddressGuard(allow_private=allow_private, resolver=resolver)
    try:
        await asyncio.wait_for(_resolve(guard, parsed), _RESOLVE_TIMEOUT)
    except asyncio.TimeoutError:
        _refuse(url, f"its host did not resolve within {_RESOLVE_TIMEOUT:g} s; try again")
    except Refused as exc:
        _refuse(url, f"{exc}; {_PRIVATE_FIX}")
    except Unresolvable as exc:
        _refuse(url, f"{exc}; check the host name")


def _parse(url: str, allow_private: bool) -> httpx.URL:
    """``url`` parsed, or ``InputError`` ``webhook_refused``."""
    import httpx

    if not isinstance(url, str) or not url.strip():
        _refuse("", "it is empty; give https://<host>/<path>")
    if len(url) > MAX_WEBHOOK_URL:
        _refuse(
            url, f"it is {len(url)} characters long, over {MAX_WEBHOOK_URL}; give a shorter one"
        )
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        _refuse(url, "it is not a valid URL; give https://<host>/<path>")
    scheme = parsed.scheme
    if not scheme:
        _refuse(url, "it is not an absolute URL; give https://<host>/<path>")
    if scheme not in ("https", "http"):
        _refuse(url, f"its scheme is {scheme!r}; give an https URL")
    if scheme == "http" and not allow_private:
        _refuse(
            url,
            "it is plain http; give an https URL (http is allowed only with "
            "JobOptions(allow_private_webhooks=True))",
        )
    host = parsed.raw_host.decode("ascii")
    if not host:
        _refuse(url, "it has no host; give https://<host>/<path>")
    if parsed.userinfo:
        _refuse(
            url,
            "it has a user name or password in it; leave them out (the receiver checks the "
            "webhook-signature header instead)",
        )
    literal = _literal(host)
    if literal is None and not _HOST_RE.match(host):
        _refuse(url, "its host is not a host name; give https://<host>/<path>")
    port = parsed.port
    if port is not None and not 1 <= port <= 65535:
        _refuse(url, f"the port {port} is outside 1-65535")
    reason = address_refusal(literal) if literal is not None else _local_name(host)
    if reason is not None and (not allow_private or literal in METADATA_ADDRESSES):
        _refuse(url, f"{host} is {reason}; {_PRIVATE_FIX}")
    return parsed


def _literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _local_name(host: str) -> str | None:
    name = host.rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return "a loopback address"  # RFC 6761: always the host itself
    return None


def _refuse(url: str, why: str) -> NoReturn:
    shown = shown_url(url) if url else "''"
    raise InputError(
        f"the webhook URL {shown} is refused: {why}",
        status_code=422,
        code=ErrorCode.WEBHOOK_REFUSED,
    )


async def _resolve(guard: AddressGuard, url: httpx.URL) -> Destination:
    port = url.port if url.port is not None else (443 if url.scheme == "https" else 80)
    return await guard.resolve(url.scheme, url.raw_host.decode("ascii"), port)


# -- the event --------------------------------------------------------------------------------


def webhook_event(status: JobStatus) -> tuple[str, bytes]:
    """``(msg_id, body)`` of the event for a job that ended: ``msg_id`` is
    ``<job id>.<state>`` (the same on every attempt), ``body`` the JSON of a ``WebhookEvent``
    (its ``timestamp`` the job's ``finished_at``, else now)."""
    kind = _EVENTS.get(status.state)
    if kind is None:
        raise ValueError(
            f"job {status.id} is {status.state}: a webhook is sent for a job that succeeded, "
            "failed or was canceled"
        )
    when = status.finished_at or datetime.now(timezone.utc)
    event = WebhookEvent(type=kind, timestamp=when, data=status)
    return f"{status.id}.{status.state}", event.model_dump_json().encode()


# -- sending ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one attempt to send a webhook came to."""

    delivered: bool  # the receiver answered a 2xx
    retry: bool  # worth another try: 408, 429, 5xx, a connection error or a timeout
    status: int | None  # the receiver's status, if it answered
    error: str | None  # why not delivered, in a few words (never a secret)


@dataclass(slots=True)
class _Seen:
    status: int | None = None


async def send_once(
    url: str,
    msg_id: str,
    body: bytes,
    signer: WebhookSigner,
    *,
    allow_private: bool,
    timeout: float = DEFAULT_WEBHOOK_TIMEOUT,
    resolver: Resolver | None = None,
    tls: ssl.SSLContext | None = None,
) -> Attempt:
    """POST ``body`` to ``url``, signed now, once, within ``timeout`` seconds (resolution
    included). The name is resolved once, every address checked (``AddressGuard``), and the
    connection made to a checked address with the name kept for Host and TLS; no redirect
    is followed (a 3xx is not delivered, and not retried), no proxy from the environment is
    used, and at most ``ANSWER_BYTES`` of the answer are read. A refused address is not
    delivered and not retried."""
    try:
        parsed = _parse(url, allow_private)
    except InputError as exc:
        return Attempt(delivered=False, retry=False, status=None, error=exc.detail)
    seen = _Seen()
    try:
        return await asyncio.wait_for(
            _send(parsed, msg_id, body, signer, allow_private, timeout, resolver, tls, seen),
            timeout,
        )
    except asyncio.TimeoutError:
        if seen.status is not None:  # it answered; its body was slow
            return _judged(seen.status)
        return Attempt(False, True, None, f"no answer within {timeout:g} s")


async def _send(
    url: httpx.URL,
    msg_id: str,
    body: bytes,
    signer: WebhookSigner,
    allow_private: bool,
    timeout: float,
    resolver: Resolver | None,
    tls: ssl.SSLContext | None,
    seen: _Seen,
) -> Attempt:
    import httpx

    guard = AddressGuard(allow_private=allow_private, resolver=resolver)
    try:
        destination = await _resolve(guard, url)
    except Refused as exc:
        return Attempt(False, False, None, f"refused: {exc}")
    except Unresolvable as exc:
        return Attempt(False, True, None, str(exc))
    headers = {**signer.headers(msg_id, body), "accept-encoding": "identity"}
    # A client per attempt: its pool would otherwise reuse a connection made for another name
    # at the same address.
    async with httpx.AsyncClient(
        verify=tls or default_tls(), trust_env=False, timeout=httpx.Timeout(timeout)
    ) as client:
        try:
            response = await send_pinned(
                client, "POST", url, destination, headers=headers, content=body
            )
        except Unreachable as exc:
            return Attempt(False, True, None, str(exc))
        except httpx.TimeoutException:
            return Attempt(False, True, None, f"no answer within {timeout:g} s")
        except httpx.HTTPError:
            return Attempt(False, True, None, "the connection broke, or the answer was not HTTP")
        seen.status = response.status_code
        try:
            with contextlib.suppress(httpx.HTTPError):  # the status is what counts
                await _drain(response)
        finally:
            await response.aclose()
    return _judged(response.status_code)


async def _drain(response: httpx.Response) -> None:
    read = 0
    async for piece in response.aiter_raw():
        read += len(piece)
        if read >= ANSWER_BYTES:
            return


def _judged(status: int) -> Attempt:
    import httpx

    if 200 <= status < 300:
        return Attempt(True, False, status, None)
    said = f"it answered {status} {httpx.codes.get_reason_phrase(status)}".rstrip()
    if 300 <= status < 400:
        return Attempt(False, False, status, f"{said}; redirects are not followed")
    return Attempt(False, status in (408, 429) or status >= 500, status, said)


def retry_delay(attempts_made: int, backoff: float) -> float:
    """Seconds to wait after ``attempts_made`` failed attempts: ``backoff``, doubled for each
    attempt after the first, at most ``MAX_WEBHOOK_DELAY``."""
    if attempts_made < 1:
        raise ValueError(f"retry_delay(attempts_made={attempts_made!r}): expected 1 or more")
    return float(min(backoff * 2.0 ** min(attempts_made - 1, 64), MAX_WEBHOOK_DELAY))


async def deliver(
    url: str,
    msg_id: str,
    body: bytes,
    signer: WebhookSigner,
    options: JobOptions,
    *,
    on_attempt: Callable[[WebhookStatus], Awaitable[None]] | None = None,
    resolver: Resolver | None = None,
    tls: ssl.SSLContext | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    timeout: float = DEFAULT_WEBHOOK_TIMEOUT,
) -> WebhookStatus:
    """Send ``body`` to ``url`` until it is delivered, refused, or ``options.webhook_attempts``
    attempts are spent, waiting ``retry_delay`` between them; the same ``msg_id`` and body
    each time, signed anew. ``on_attempt`` gets the ``WebhookStatus`` after each attempt.
    Returns it ``delivered`` or ``failed``."""
    status = WebhookStatus(url=url, state="pending")
    for made in range(1, options.webhook_attempts + 1):
        attempt = await send_once(
            url,
            msg_id,
            body,
            signer,
            allow_private=options.allow_private_webhooks,
            timeout=timeout,
            resolver=resolver,
            tls=tls,
        )
        last = made == options.webhook_attempts or not attempt.retry
        status = WebhookStatus(
            url=url,
            state="delivered" if attempt.delivered else "failed" if last else "pending",
            attempts=made,
            last_status=attempt.status,
            last_error=attempt.error,
        )
        if on_attempt is not None:
            await on_attempt(status)
        if status.state != "pending":
            return status
        await sleep(retry_delay(made, options.webhook_backoff))
    return status  # webhook_attempts >= 1: never reached
