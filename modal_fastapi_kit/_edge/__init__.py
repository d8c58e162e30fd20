"""Edge configs for a custom domain in front of a Modal web endpoint.

One module per edge (``_nginx``, ``_caddy``, ``_worker``, ``_traefik``), each a function
``render_*(spec, secrets) -> list[EdgeFile]``; ``_spec`` holds what they share.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ._caddy import render_caddy
from ._nginx import render_nginx
from ._spec import EdgeFile, EdgeSecrets, EdgeSpec
from ._traefik import render_traefik
from ._worker import render_worker

__all__ = ["EDGES", "EdgeFile", "EdgeSecrets", "EdgeSpec", "render", "write_files"]

Renderer = Callable[[EdgeSpec, EdgeSecrets], list[EdgeFile]]

EDGES: dict[str, Renderer] = {
    "nginx": render_nginx,
    "caddy": render_caddy,
    "cloudflare-worker": render_worker,
    "traefik": render_traefik,
}


def render(edge: str, spec: EdgeSpec, secrets: EdgeSecrets) -> list[EdgeFile]:
    """The files for ``edge`` (one of ``EDGES``)."""
    return EDGES[edge](spec, secrets)


def write_files(files: list[EdgeFile], out: Path) -> list[Path]:
    """Write ``files`` into ``out``; secret files get mode 600 whatever the umask."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for file in files:
        path = out / file.name
        mode = 0o600 if file.secret else 0o644
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(file.text)
        written.append(path)
    return written
