"""The batched form of a ``ChatServer``: ``join`` / ``step`` / ``leave`` over text pieces.

A ``ChatServer`` that defines ``join(requests)``, ``step()`` and ``leave(keys)`` decodes its
chats together, step by step, and a chat that arrives while others are decoding joins them at
the next step (see ``ModelServer``: the joining form). ``step`` answers, per key, the chat's
next piece of text (a ``str``; ``""`` or ``None``: nothing this step), ``END`` when it is done,
or an exception for that chat alone.

``ChatServer`` wraps the three hooks a subclass defines (``wrap_chat_steps``) so that, as with
``generate``, each request's prompt is counted first (``count_prompt_tokens``; an error there,
such as an ``InputError`` for a prompt too long, refuses that request alone: ``join`` and
``leave`` never see its key), the count rides on the chat's first piece of text, and each
``str`` becomes a ``Piece``. A chat that ends before any text (``END`` first) leaves at once,
and its count goes out as a piece of its own, before the end.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from .._core.streams import END
from ._chat_schemas import ChatRequest, Piece

__all__ = ["wrap_chat_steps"]

_CHATS = "_mfk_chats"  # the instance attribute holding what the wrappers remember


class _Chats:
    """What the wrappers remember per chat between calls."""

    def __init__(self) -> None:
        self.counts: dict[int, int | None] = {}  # prompt tokens, until the first piece
        self.joined: set[int] = set()  # keys the service's own join got (the others: refused)
        self.ending: set[int] = set()  # ended before any text: END at the next step
        self.early: list[int] = []  # those, for the service's leave right after this call

    def count(self, key: int, count: Any) -> None:
        self.counts[key] = count

    def welcome(self, requests: dict[int, ChatRequest], refused: dict[int, Any]) -> dict[int, Any]:
        welcome = {key: r for key, r in requests.items() if key not in refused}
        self.joined.update(welcome)
        return welcome

    def pieces(self, answer: Any, extra: dict[int, Any]) -> Any:
        """``answer`` with each chat's text as a ``Piece`` (the first carries the count), and
        ``extra`` (refusals, or the ends held back a step) beside it."""
        if answer is None:
            return extra or None
        if not isinstance(answer, Mapping):
            return answer  # the kit says what to return instead
        return {**{key: self._piece(key, outcome) for key, outcome in answer.items()}, **extra}

    def _piece(self, key: int, outcome: Any) -> Any:
        if isinstance(outcome, str):
            if not outcome:
                return None
            return Piece(text=outcome, prompt_tokens=self.counts.pop(key, None))
        if outcome is END and self.counts.get(key) is not None:
            self.ending.add(key)  # nothing generated: the count still reaches usage
            self.early.append(key)
            return Piece(prompt_tokens=self.counts.pop(key))
        return outcome

    def ended(self) -> dict[int, Any]:
        ended, self.ending = self.ending, set()
        return dict.fromkeys(ended, END)

    def leaving_early(self) -> list[int]:
        early, self.early = self.early, []
        return early

    def forget(self, keys: list[int]) -> list[int]:
        """Forget ``keys``; those the service's ``join`` got and did not leave yet."""
        for key in keys:
            self.counts.pop(key, None)
        joined = [key for key in keys if key in self.joined]
        self.joined.difference_update(joined)
        return joined


def _chats(instance: Any) -> _Chats:
    chats: _Chats | None = vars(instance).get(_CHATS)
    if chats is None:
        chats = _Chats()
        setattr(instance, _CHATS, chats)
    return chats


def wrap_chat_steps(cls: type) -> None:
    """Wrap the ``join``, ``step`` and ``leave`` that ``cls`` itself defines."""
    own = vars(cls)
    for name, wrap in (("join", _join), ("step", _step), ("leave", _leave)):
        if name in own and callable(own[name]):
            setattr(cls, name, functools.wraps(own[name])(wrap(own[name])))


def _join(join: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(join):

        async def joined_async(self: Any, requests: dict[int, ChatRequest]) -> Any:
            chats, refused = _chats(self), {}
            for key, request in requests.items():
                try:
                    count = self.count_prompt_tokens(request)
                    chats.count(key, await count if inspect.isawaitable(count) else count)
                except Exception as exc:
                    refused[key] = exc
            welcome = chats.welcome(requests, refused)
            answer = chats.pieces(await join(self, welcome) if welcome else None, refused)
            if early := chats.leaving_early():
                await self.leave(early)
            return answer

        return joined_async

    def joined(self: Any, requests: dict[int, ChatRequest]) -> Any:
        chats, refused = _chats(self), {}
        for key, request in requests.items():
            try:
                chats.count(key, self.count_prompt_tokens(request))
            except Exception as exc:
                refused[key] = exc
        welcome = chats.welcome(requests, refused)
        answer = chats.pieces(join(self, welcome) if welcome else None, refused)
        if early := chats.leaving_early():
            self.leave(early)
        return answer

    return joined


def _step(step: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(step):

        async def stepped_async(self: Any) -> Any:
            chats = _chats(self)
            # no step for a service that holds no chat (one that ended at once is told here)
            answer = chats.pieces(await step(self) if chats.joined else None, chats.ended())
            if early := chats.leaving_early():
                await self.leave(early)
            return answer

        return stepped_async

    def stepped(self: Any) -> Any:
        chats = _chats(self)
        answer = chats.pieces(step(self) if chats.joined else None, chats.ended())
        if early := chats.leaving_early():
            self.leave(early)
        return answer

    return stepped


def _leave(leave: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(leave):

        async def left_async(self: Any, keys: list[int]) -> Any:
            joined = _chats(self).forget(keys)
            return await leave(self, joined) if joined else None

        return left_async

    def left(self: Any, keys: list[int]) -> Any:
        joined = _chats(self).forget(keys)
        return leave(self, joined) if joined else None

    return left
