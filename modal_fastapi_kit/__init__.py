"""Serve a PyTorch / transformers model on Modal behind FastAPI, from one class.

The names here are the ones a service touches; the exceptions are in
``modal_fastapi_kit.exceptions``, the OpenAI-compatible base classes in
``modal_fastapi_kit.openai``.
"""

from ._config import RetryPolicy as RetryPolicy
from ._config import ServiceConfig as ServiceConfig
from ._core.streams import END as END
from ._decorator import gpu_service as gpu_service
from ._http.origin_lock import OriginLock as OriginLock
from ._http.origin_lock import apply_origin_lock as apply_origin_lock
from ._http.router import ServiceRouter as ServiceRouter
from ._metrics import metrics_registry as metrics_registry
from ._server import ModelServer as ModelServer
from .exceptions import InputError as InputError

__version__ = "0.1.0"

__all__ = [
    "END",
    "InputError",
    "ModelServer",
    "OriginLock",
    "RetryPolicy",
    "ServiceConfig",
    "ServiceRouter",
    "apply_origin_lock",
    "gpu_service",
    "metrics_registry",
]
