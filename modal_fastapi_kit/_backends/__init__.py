"""Backends answer predict requests for the router; the router does not know which one runs.

- ``local``: the model in this process, behind the dynamic batcher (``LocalBackend``).
- ``modal``: the GPU class deployed on Modal, called with ``.remote.aio`` (``ModalBackend``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from .._errors import ConfigError
from ._base import Backend, LoadState

if TYPE_CHECKING:
    from .._server import ModelServer

__all__ = ["Backend", "BackendName", "LoadState", "create_backend"]

BackendName = Literal["local", "modal"]


def create_backend(
    server_cls: type[ModelServer[Any, Any]], name: BackendName, **options: Any
) -> Backend:
    """Build the backend ``name`` for a decorated ModelServer subclass."""
    config = server_cls.config()
    if name == "local":
        from .local import LocalBackend

        return LocalBackend(server_cls, config, **options)
    if name == "modal":
        from .remote import ModalBackend

        return ModalBackend(server_cls, config, **options)
    raise ConfigError(f"backend={name!r} is unknown: use backend='local' or backend='modal'")
