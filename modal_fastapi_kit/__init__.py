"""Serve a PyTorch / transformers model on Modal behind FastAPI, from one class."""

from ._backends import Backend as Backend
from ._backends import LoadState as LoadState
from ._config import RetryPolicy as RetryPolicy
from ._config import ServiceConfig as ServiceConfig
from ._core.streams import END as END
from ._decorator import gpu_service as gpu_service
from ._errors import BackendUnavailable as BackendUnavailable
from ._errors import ConfigError as ConfigError
from ._errors import DeadlineExceeded as DeadlineExceeded
from ._errors import InputError as InputError
from ._errors import KitError as KitError
from ._errors import MissingExtraError as MissingExtraError
from ._errors import NotReadyError as NotReadyError
from ._errors import PredictError as PredictError
from ._errors import QueueFullError as QueueFullError
from ._errors import ServingError as ServingError
from ._errors import UpstreamError as UpstreamError
from ._http.errors import ErrorBody as ErrorBody
from ._http.origin_lock import OriginLock as OriginLock
from ._http.origin_lock import apply_origin_lock as apply_origin_lock
from ._http.router import ServiceRouter as ServiceRouter
from ._metrics import metrics_registry as metrics_registry
from ._server import ModelServer as ModelServer

__version__ = "0.1.0"

__all__ = [
    "END",
    "Backend",
    "BackendUnavailable",
    "ConfigError",
    "DeadlineExceeded",
    "ErrorBody",
    "InputError",
    "KitError",
    "LoadState",
    "MissingExtraError",
    "ModelServer",
    "NotReadyError",
    "OriginLock",
    "PredictError",
    "QueueFullError",
    "RetryPolicy",
    "ServiceConfig",
    "ServiceRouter",
    "ServingError",
    "UpstreamError",
    "apply_origin_lock",
    "gpu_service",
    "metrics_registry",
]
