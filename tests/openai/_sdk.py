"""What the OpenAI-compatible tests share: an example served by ``mfk serve``, and clients of
the official ``openai`` SDK, each closed after its test (``conftest.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import openai

from .._servers import BIN, free_port, running, wait_ready

__all__ = ["OPEN", "sdk_client", "serve_example"]

OPEN: list[openai.OpenAI] = []  # the SDK clients made by the running test


@contextmanager
def serve_example(path: str, env: dict[str, str] | None = None) -> Iterator[tuple[str, list[str]]]:
    """``mfk serve path`` on a free port, logging at debug: its base URL and its log lines."""
    port = free_port()
    args = [str(BIN / "mfk"), "serve", path, "--port", str(port), "--log-level", "debug"]
    with running(args, env=env) as server:
        base = f"http://127.0.0.1:{port}"
        wait_ready(base)
        yield base, server.lines


def sdk_client(base: str, **options: Any) -> openai.OpenAI:
    """An ``openai.OpenAI`` for the service at ``base``, closed after the test."""
    OPEN.append(openai.OpenAI(base_url=f"{base}/v1", **{"api_key": "unused", **options}))
    return OPEN[-1]
