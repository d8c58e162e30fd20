"""The fenced code blocks of a markdown page, for the tests that run them."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")


@dataclass(frozen=True)
class Block:
    lang: str  # the info string's first word; "" for a plain fence
    code: str  # the lines between the fences, de-indented by the opening fence's indent
    line: int  # the opening fence's line, from 1


def fenced_blocks(page: Path) -> list[Block]:
    """Every fenced block of ``page`` (CommonMark fences, indented ones in lists included)."""
    blocks: list[Block] = []
    opened: tuple[str, str, str, int] | None = None  # indent, fence, info, line
    body: list[str] = []
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if opened is None:
            match = FENCE.match(line)
            if match:
                opened = (match["indent"], match["fence"], match["info"].strip(), number)
                body = []
            continue
        indent, fence, info, start = opened
        stripped = line.strip()
        if stripped.startswith(fence) and set(stripped) == {fence[0]}:
            lang = info.split()[0] if info else ""
            blocks.append(Block(lang, "".join(f"{row}\n" for row in body), start))
            opened = None
        else:
            body.append(line.removeprefix(indent))
    if opened is not None:
        raise ValueError(f"{page}:{opened[3]}: a fence that is never closed")
    return blocks


def blocks_of(page: Path, lang: str, containing: str = "") -> list[str]:
    """The code of ``page``'s ``lang`` blocks that contain ``containing``."""
    return [b.code for b in fenced_blocks(page) if b.lang == lang and containing in b.code]


def block(page: Path, lang: str, containing: str) -> str:
    """The one ``lang`` block of ``page`` that contains ``containing``."""
    found = blocks_of(page, lang, containing)
    assert len(found) == 1, f"{page.name}: {len(found)} {lang} blocks contain {containing!r}"
    return found[0]


def deploy_without_modal(
    target: str, monkeypatch: Any, env: str | None = None
) -> tuple[list[str], str]:
    """``mfk deploy target`` in this process, with credentials taken as present and the
    ``modal deploy`` it runs replaced by a no-op that prints no URL: the command it would
    have run, and what it printed after it (its URL is then the one the config implies)."""
    from modal_fastapi_kit import _modal
    from modal_fastapi_kit.cli import _deploy

    ran: list[list[str]] = []

    def run_streaming(command: list[str]) -> list[str]:
        ran.append(command)
        return []

    monkeypatch.setattr(_modal, "credentials_configured", lambda: True)
    monkeypatch.setattr(_deploy, "_run_streaming", run_streaming)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert _deploy.run(argparse.Namespace(target=target, env=env)) == 0
    (command,) = ran
    return command, printed.getvalue()
