"""API keys: ``@gpu_service(auth="api-key")``.

The keys come from an environment variable (``MFK_API_KEYS`` unless ``api_keys_env`` says
otherwise), comma-separated so that two can be valid at once while clients move from the old
key to the new. On Modal the variable comes from the Modal Secret named by
``api_keys_secret``, attached to the function that checks keys. A client sends
``Authorization: Bearer <key>`` (what the OpenAI SDKs send for ``api_key=``) or
``X-API-Key: <key>``; every configured key is compared in constant time. A missing or wrong
key answers 401 with ``WWW-Authenticate: Bearer``. Starting with auth on and no key
configured is a ``ConfigError``, never an open service.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import Depends
from fastapi.params import Depends as DependsParam
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from .._config import ServiceConfig
from ..exceptions import ConfigError, Unauthorized

__all__ = [
    "MIN_KEY_LENGTH",
    "ApiKeys",
    "guard_keys",
    "key_dependency",
    "presented_key",
    "require_key",
]

MIN_KEY_LENGTH = 16
_KEY_HINT = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"

# Declared for OpenAPI (so /docs has an Authorize button); the check itself is ApiKeys.check.
_BEARER = HTTPBearer(auto_error=False, description="an API key as a Bearer token")
_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key")


class ApiKeys:
    """The keys a service accepts."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [key.encode() for key in keys]

    @classmethod
    def from_environment(
        cls, config: ServiceConfig, environ: Mapping[str, str] | None = None
    ) -> ApiKeys:
        """The keys in ``config.api_keys_env``; refuses to start without a usable one."""
        env = os.environ if environ is None else environ
        name = config.api_keys_env
        keys = [key.strip() for key in env.get(name, "").split(",") if key.strip()]
        where = (
            f"the Modal Secret {config.api_keys_secret!r}"
            if config.api_keys_secret
            else "a Modal Secret named in api_keys_secret= on Modal"
        )
        if not keys:
            raise ConfigError(
                f"{config.name} has auth='api-key' but ${name} holds no key: set "
                f"{name}=KEY (or KEY1,KEY2 while rotating) in the environment, or in {where}; "
                f"make a key with {_KEY_HINT}"
            )
        short = [k for k in keys if len(k) < MIN_KEY_LENGTH]
        if short:
            raise ConfigError(
                f"${name} holds a key of {len(short[0])} characters; use keys of at least "
                f"{MIN_KEY_LENGTH}, e.g. from {_KEY_HINT}"
            )
        return cls(keys)

    def check(self, presented: str | None) -> bool:
        """Whether ``presented`` is one of the keys, in time independent of where they differ."""
        if not presented:
            return False
        given = presented.encode()
        matched = False
        for key in self._keys:  # no early exit: every key is compared
            matched |= hmac.compare_digest(given, key)
        return matched


def presented_key(authorization: str | None, x_api_key: str | None) -> str | None:
    """The key a request presents: a Bearer token, else ``X-API-Key`` (FastAPI's parsing)."""
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return x_api_key or None


def require_key(keys: ApiKeys, presented: str | None) -> None:
    """Let a valid key through; anything else is ``Unauthorized`` (401)."""
    if not keys.check(presented):
        raise Unauthorized(
            "a valid API key is required: send Authorization: Bearer <key> or X-API-Key"
            if presented is None
            else "the API key is not valid"
        )


def key_dependency(keys: ApiKeys) -> DependsParam:
    """A route dependency that lets a request with a valid key through, else 401."""

    async def check_key(
        bearer: HTTPAuthorizationCredentials | None = Depends(_BEARER),  # noqa: B008
        header: str | None = Depends(_HEADER),
    ) -> None:
        require_key(keys, bearer.credentials if bearer is not None else header or None)

    setattr(check_key, _KEYS_ATTR, keys)
    guard: DependsParam = Depends(check_key)
    return guard


def guard_keys(dependencies: Sequence[Any]) -> list[ApiKeys] | None:
    """The keys behind ``dependencies`` when each is a ``key_dependency``; else ``None``
    (a dependency the kit does not know must run as FastAPI runs it)."""
    found: list[ApiKeys] = []
    for dependency in dependencies:
        keys = getattr(dependency.dependency, _KEYS_ATTR, None)
        if not isinstance(keys, ApiKeys):
            return None
        found.append(keys)
    return found


_KEYS_ATTR = "__mfk_keys__"
