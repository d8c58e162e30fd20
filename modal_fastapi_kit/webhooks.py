"""Receiving the webhook that tells you a job ended: check its signature, read the job.

A service with jobs calls the ``Webhook-URL`` given with a submission once the job succeeds,
fails or is canceled: a POST in the Standard Webhooks format, signed with the secret(s) in
the service's ``$MFK_WEBHOOK_SECRET``. A receiver, in a FastAPI app:

    import os

    from fastapi import FastAPI, HTTPException, Request

    from modal_fastapi_kit.webhooks import WebhookVerificationError, verify_webhook

    app = FastAPI()

    @app.post("/hooks/jobs", status_code=204)
    async def job_ended(request: Request) -> None:
        try:
            event = verify_webhook(
                await request.body(), request.headers, os.environ["MFK_WEBHOOK_SECRET"]
            )
        except WebhookVerificationError:
            raise HTTPException(400, "not a signed job event") from None
        print(event.type, event.data.id, event.data.links.result)

Pass the body exactly as received (bytes, before any JSON parsing): the signature covers
those bytes. Answer with a 2xx quickly; anything else (or no answer within 10 s) is tried
again later, with the same ``webhook-id`` header, so a receiver that must act once keys on
it (or on ``event.data.id``). The event's ``data`` is the job's ``JobStatus``, the document
the status route answers; fetch the result from ``event.data.links.result``.

This module imports ``standardwebhooks`` and ``pydantic`` only: a receiver pays for neither
the server, FastAPI nor httpx.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ValidationError, model_validator
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from ._jobs.status import JobStatus

__all__ = ["EventType", "WebhookEvent", "WebhookVerificationError", "verify_webhook"]

SECRET_PREFIX = "whsec_"
EventType = Literal["job.succeeded", "job.failed", "job.canceled"]


class WebhookEvent(BaseModel):
    """A webhook's body: what happened (``type``), when (``timestamp``, UTC) and the job
    (``data``, its ``JobStatus``; ``data.state`` is the state ``type`` names)."""

    type: EventType
    timestamp: datetime
    data: JobStatus

    @model_validator(mode="after")
    def _type_names_the_state(self) -> WebhookEvent:
        if self.type != f"job.{self.data.state}":
            raise ValueError(f"type {self.type!r} does not match data.state {self.data.state!r}")
        return self


def verify_webhook(
    body: bytes | str, headers: Mapping[str, str], secret: str | Sequence[str]
) -> WebhookEvent:
    """The event in ``body``, once its signature checks out against ``secret``.

    - ``body``: the request's body exactly as received.
    - ``headers``: the request's headers (``webhook-id``, ``webhook-timestamp``,
      ``webhook-signature``; any case).
    - ``secret``: the ``whsec_...`` secret, or several (a list, or one string with commas,
      as ``$MFK_WEBHOOK_SECRET`` holds them while a secret is rotated): any one that signed
      the call verifies it.

    Raises ``WebhookVerificationError`` for missing headers, a signature that none of the
    secrets made, a timestamp more than 5 minutes away from now (a replay), or a body that
    is not a job event; ``ValueError`` for a secret that is not ``whsec_`` + base64.
    """
    hooks = [Webhook(key) for key in _keys(secret)]
    lowered = {name.lower(): value for name, value in headers.items()}
    refused: list[WebhookVerificationError] = []
    for hook in hooks:
        try:
            hook.verify(body, lowered, json_parse=False)
        except WebhookVerificationError as exc:
            refused.append(exc)
        else:
            break
    else:
        raise refused[0]
    try:
        return WebhookEvent.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the body"
        raise WebhookVerificationError(
            f"the body is not a job event: {where}: {first['msg']}"
        ) from None


def _keys(secret: str | Sequence[str]) -> list[bytes]:
    given = secret.split(",") if isinstance(secret, str) else list(secret)
    keys: list[bytes] = []
    for number, one in enumerate(given, 1):
        if not isinstance(one, str):
            raise TypeError(f"verify_webhook: secret {number} is a {type(one).__name__}, not a str")
        one = one.strip()
        if one:
            keys.append(_decode(one, number))
    if not keys:
        raise ValueError(
            "verify_webhook needs a secret: give the service's whsec_... secret (its "
            "$MFK_WEBHOOK_SECRET), or a list of them"
        )
    return keys


def _decode(secret: str, number: int) -> bytes:
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not key:
        raise ValueError(
            f"verify_webhook: secret {number} is not a webhook secret: expected 'whsec_' "
            "followed by base64, as the service's $MFK_WEBHOOK_SECRET holds it"
        )
    return key
