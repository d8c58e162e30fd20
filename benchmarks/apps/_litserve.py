"""How every LitServe contender runs: one inference worker on the machine's accelerator (the
GPU when there is one), on 127.0.0.1, with no access log and no client file."""

from __future__ import annotations

from typing import Any

import litserve as ls  # type: ignore[import-untyped]

__all__ = ["serve"]


def serve(api: Any, port: int) -> None:
    server = ls.LitServer(api, accelerator="auto", devices=1, workers_per_device=1)
    server.run(
        host="127.0.0.1",
        port=port,
        log_level="warning",
        generate_client_file=False,
        access_log=False,
    )
