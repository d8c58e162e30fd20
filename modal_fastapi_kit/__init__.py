"""Serve a PyTorch / transformers model on Modal behind FastAPI, from one class.

The names here are the ones a service touches; the exceptions are in
``modal_fastapi_kit.exceptions``, the OpenAI-compatible base classes in
``modal_fastapi_kit.openai``, the typed client in ``modal_fastapi_kit.client``.

Each name is imported when first used, so that a process that only calls a service
(``modal_fastapi_kit.client``) imports neither the server nor the web stack, and one that
only defines a service does not import FastAPI, Starlette or prometheus-client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._config import RetryPolicy as RetryPolicy
    from ._config import ServiceConfig as ServiceConfig
    from ._core.streams import END as END
    from ._decorator import gpu_service as gpu_service
    from ._file import File as File
    from ._file import FileLimits as FileLimits
    from ._http.origin_lock import OriginLock as OriginLock
    from ._http.origin_lock import apply_origin_lock as apply_origin_lock
    from ._http.router import ServiceRouter as ServiceRouter
    from ._jobs.options import JobOptions as JobOptions
    from ._metrics import metrics_registry as metrics_registry
    from ._server import ModelServer as ModelServer
    from ._weights import HuggingFaceWeights as HuggingFaceWeights
    from ._weights import LocalWeights as LocalWeights
    from .exceptions import InputError as InputError

__version__ = "0.1.0"

__all__ = [
    "END",
    "File",
    "FileLimits",
    "HuggingFaceWeights",
    "InputError",
    "JobOptions",
    "LocalWeights",
    "ModelServer",
    "OriginLock",
    "RetryPolicy",
    "ServiceConfig",
    "ServiceRouter",
    "apply_origin_lock",
    "gpu_service",
    "metrics_registry",
]

# name -> the module that defines it, imported on first access
_WHERE = {
    "END": "._core.streams",
    "File": "._file",
    "FileLimits": "._file",
    "InputError": ".exceptions",
    "JobOptions": "._jobs.options",
    "ModelServer": "._server",
    "RetryPolicy": "._config",
    "ServiceConfig": "._config",
    "gpu_service": "._decorator",
    "OriginLock": "._http.origin_lock",
    "apply_origin_lock": "._http.origin_lock",
    "ServiceRouter": "._http.router",
    "metrics_registry": "._metrics",
    "HuggingFaceWeights": "._weights",
    "LocalWeights": "._weights",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
