"""``JobOptions``: how a service's jobs run and how long what they leave is kept.

``@gpu_service(jobs=True)`` takes the defaults; ``jobs=JobOptions(run_timeout=4 * 3600)``
changes some. Checked when the class is decorated, like every other option.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..exceptions import ConfigError

__all__ = [
    "DEFAULT_MAX_PENDING",
    "DEFAULT_MAX_WAIT",
    "DEFAULT_RETENTION",
    "DEFAULT_RUN_TIMEOUT",
    "DEFAULT_WEBHOOK_SECRET_ENV",
    "MAX_RETENTION",
    "MAX_RUN_TIMEOUT",
    "MAX_WAIT",
    "JobOptions",
]

DEFAULT_RUN_TIMEOUT = 3600.0  # seconds one job may run
MAX_RUN_TIMEOUT = 86_400.0  # Modal's longest function timeout (per attempt)
DEFAULT_RETENTION = 86_400.0  # seconds a finished job's result is kept
MAX_RETENTION = 7 * 86_400.0  # Modal keeps a spawned call's result 7 days
DEFAULT_MAX_PENDING = 1000  # jobs queued or running at once
DEFAULT_MAX_WAIT = 30.0  # the longest long-poll of the result route
MAX_WAIT = 120.0  # well under Modal's 150 s web limit
DEFAULT_WEBHOOK_SECRET_ENV = "MFK_WEBHOOK_SECRET"
DEFAULT_WEBHOOK_ATTEMPTS = 8
DEFAULT_WEBHOOK_BACKOFF = 5.0  # seconds before the second delivery attempt; doubled each time
MAX_WEBHOOK_DELAY = 3600.0  # the longest wait between two delivery attempts

_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True, kw_only=True)
class JobOptions:
    """A service's jobs (``@gpu_service(jobs=JobOptions(...))``).

    - ``run_timeout``: seconds one job may run (at most 86400, Modal's limit per attempt);
      a model call of a job that runs longer counts as stuck, and the job fails ``deadline``.
    - ``retention``: seconds a finished job (its result, its error) is kept; after it, status
      says ``expired`` and the result route answers 410 (at most 7 days, Modal's).
    - ``max_pending``: jobs queued or running at once; a submission past it is a 503
      ``too_many_jobs``.
    - ``max_wait``: the longest ``?wait=`` of the result route's long-poll (at most 120 s).
    - ``store``: the SQLite file of ``mfk serve`` and a mounted router (default
      ``$MFK_JOBS_DB``, else ``.mfk/jobs/<service name>.sqlite3``); unused on Modal.
    - ``webhook_secret_env``: the variable holding the secret(s) that sign webhooks
      (``whsec_...``; two, comma-separated, while rotating); ``webhook_secret``: the Modal
      Secret that sets it on Modal.
    - ``allow_private_webhooks``: let webhooks go to ``http`` and to loopback, private and
      link-local addresses (tests, internal networks).
    - ``webhook_attempts`` / ``webhook_backoff``: how often a delivery is tried, and the
      seconds before the second try (doubled each time, at most an hour).
    """

    run_timeout: float = DEFAULT_RUN_TIMEOUT
    retention: float = DEFAULT_RETENTION
    max_pending: int = DEFAULT_MAX_PENDING
    max_wait: float = DEFAULT_MAX_WAIT
    store: str | None = None
    webhook_secret_env: str = DEFAULT_WEBHOOK_SECRET_ENV
    webhook_secret: str | None = None
    allow_private_webhooks: bool = False
    webhook_attempts: int = DEFAULT_WEBHOOK_ATTEMPTS
    webhook_backoff: float = DEFAULT_WEBHOOK_BACKOFF

    def __post_init__(self) -> None:
        _seconds("run_timeout", self.run_timeout, MAX_RUN_TIMEOUT, "Modal's limit per attempt")
        _seconds("retention", self.retention, MAX_RETENTION, "Modal keeps results 7 days")
        _seconds("max_wait", self.max_wait, MAX_WAIT, "well under Modal's 150 s web limit")
        _seconds("webhook_backoff", self.webhook_backoff, MAX_WEBHOOK_DELAY, "an hour")
        _check(
            _is_int(self.max_pending) and self.max_pending >= 1,
            "max_pending",
            self.max_pending,
            "an int >= 1: the jobs that may be queued or running at once",
        )
        _check(
            _is_int(self.webhook_attempts) and 1 <= self.webhook_attempts <= 20,
            "webhook_attempts",
            self.webhook_attempts,
            "an int from 1 to 20",
        )
        _check(
            self.store is None or (isinstance(self.store, str) and bool(self.store)),
            "store",
            self.store,
            "the path of a SQLite file, e.g. '/var/lib/mfk/jobs.sqlite3', or None",
        )
        _check(
            isinstance(self.webhook_secret_env, str)
            and bool(_ENV_RE.match(self.webhook_secret_env)),
            "webhook_secret_env",
            self.webhook_secret_env,
            "the name of an environment variable, e.g. 'MFK_WEBHOOK_SECRET'",
        )
        _check(
            self.webhook_secret is None
            or (isinstance(self.webhook_secret, str) and bool(self.webhook_secret)),
            "webhook_secret",
            self.webhook_secret,
            "the name of a Modal Secret that sets the webhook secret variable, or None",
        )
        _check(
            isinstance(self.allow_private_webhooks, bool),
            "allow_private_webhooks",
            self.allow_private_webhooks,
            "True or False",
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _seconds(name: str, value: object, most: float, why: str) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= most
    _check(ok, name, value, f"seconds in (0, {most:g}] ({why})")


def _check(ok: bool, name: str, value: object, expected: str) -> None:
    if not ok:
        raise ConfigError(f"JobOptions({name}={value!r}) is invalid: expected {expected}")
