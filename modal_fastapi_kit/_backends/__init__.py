"""Backends answer predict requests for the router; the router does not know which one runs.

- ``local``: the model in this process, its runtime behind the dynamic batcher
  (``LocalBackend``).
- ``modal``: the GPU class deployed on Modal, called with ``.remote.aio`` (``ModalBackend``).
"""

from __future__ import annotations

from typing import Any, Literal

from .._core.spec import ServiceSpec
from ..exceptions import ConfigError
from .base import Backend, LoadState

__all__ = ["Backend", "BackendName", "LoadState", "create_backend"]

BackendName = Literal["local", "modal"]


def create_backend(spec: ServiceSpec, name: BackendName, **options: Any) -> Backend:
    """Build the backend ``name`` for a decorated class's spec."""
    if name == "local":
        from .local import LocalBackend

        return LocalBackend(spec, **options)
    if name == "modal":
        if spec.config.topology == "server":
            raise ConfigError(
                f"backend='modal' calls the deployed GPU class with .remote(), which a Modal "
                f"Server (topology='server') does not take: call {spec.name}'s URL over HTTP "
                f"instead, e.g. {spec.name}.client('https://...modal.direct')"
            )
        from .modal import ModalBackend

        return ModalBackend(spec, **options)
    raise ConfigError(f"backend={name!r} is unknown: use backend='local' or backend='modal'")
