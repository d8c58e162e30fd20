"""One table of failures, answered the same way on every path a request can take:

- local: the router on the in-process backend (``mfk serve``, ``include_router``);
- split: the web tier's router on the Modal backend, calling the GPU class's ``mfk_predict``
  inside a container run by Modal's own lifecycle code (envelopes across the wire);
- colocated: the GPU class's own ``mfk_web`` app, in such a container.

Streams are checked in both their forms: a generator, and ``join`` / ``step`` / ``leave``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest
from pydantic import BaseModel

from modal_fastapi_kit import END, InputError, ModelServer, gpu_service

from ._servers import ThreadedServer, wait_ready
from .modal_container import ModalContainer

pytestmark = pytest.mark.timeout(120)


class Case(BaseModel):
    mode: str
    x: int = 1


class Answer(BaseModel):
    y: int


RELEASE = threading.Event()


class TableModel(ModelServer[Case, Answer]):
    def predict_batch(self, items: list[Case]) -> list[object]:
        answers: list[object] = []
        for item in items:
            if item.mode == "raise":
                raise RuntimeError("secret: the whole call failed")
            if item.mode == "refuse":
                raise InputError("the model cannot take this case")
            if item.mode == "hang":
                RELEASE.wait(30)
            answers.append(
                {
                    "ok": Answer(y=2 * item.x),
                    "hang": Answer(y=0),
                    "slot-error": ValueError("secret: this item failed"),
                    "slot-refuse": InputError("this item is unreadable", status_code=400),
                    "garbage": {"z": "not an Answer"},
                }[item.mode]
            )
        return answers


OPTIONS = {"route": "/case", "max_batch_size": 4, "stall_timeout": 0.5, "request_timeout": 10}


@gpu_service(name="table-split", **OPTIONS)
class SplitTable(TableModel):
    pass


@gpu_service(name="table-colocated", topology="colocated", **OPTIONS)
class ColocatedTable(TableModel):
    pass


# (request, status, what the body says, its code): the same on every path.
TABLE = [
    ({"mode": "ok", "x": 4}, 200, '{"y":8}', None),
    ({"mode": "raise"}, 500, "predict failed; quote the request id", "predict_failed"),
    ({"mode": "refuse"}, 422, "the model cannot take this case", "invalid_input"),
    ({"mode": "slot-error"}, 500, "predict failed; quote the request id", "predict_failed"),
    ({"mode": "slot-refuse"}, 400, "this item is unreadable", "invalid_input"),
    ({"mode": "garbage"}, 500, "predict failed; quote the request id", "predict_failed"),
    ({"mode": "hang"}, 503, "past stall_timeout=0.5s", "stalled"),
    ({"mode": "ok", "x": 1}, 200, '{"y":2}', None),  # and it serves again once the call returned
]

Ask = Callable[[dict[str, object]], tuple[int, str]]
Pause = Callable[[float], None]  # let the serving loop run (its watchdog beats meanwhile)


@contextmanager
def local(server_cls: type = SplitTable) -> Iterator[tuple[Ask, Pause]]:
    with ThreadedServer(server_cls.asgi_app()) as server:  # type: ignore[attr-defined]
        wait_ready(server.url)
        with httpx.Client(base_url=server.url, timeout=20) as client:

            def ask(body: dict[str, object]) -> tuple[int, str]:
                response = client.post("/case", json=body)
                return response.status_code, response.text

            yield ask, time.sleep


@contextmanager
def in_container(
    server_cls: type, web: Callable[[ModalContainer], object]
) -> Iterator[tuple[Ask, Pause]]:
    with ModalContainer(server_cls) as container, container.serving(web(container)) as app:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]

        async def post(body: dict[str, object]) -> httpx.Response:
            async with httpx.AsyncClient(transport=transport, base_url="http://c") as client:
                return await client.post("/case", json=body)

        def ask(body: dict[str, object]) -> tuple[int, str]:
            response = container.run(post(body))
            return response.status_code, response.text

        yield ask, lambda seconds: container.run(asyncio.sleep(seconds))


def split(server_cls: type = SplitTable) -> Iterator[tuple[Ask, Pause]]:
    return in_container(
        server_cls,
        lambda c: server_cls.asgi_app(backend="modal", handle=c.handle()),  # type: ignore[attr-defined]
    )


def colocated(server_cls: type = ColocatedTable) -> Iterator[tuple[Ask, Pause]]:
    return in_container(server_cls, lambda c: c.partials["mfk_web"].raw_f(c.instance))


@pytest.mark.parametrize("path", [local, split, colocated], ids=["local", "split", "colocated"])
def test_every_path_answers_the_failure_table_the_same_way(path):
    RELEASE.clear()
    seen = []
    with path() as (ask, pause):  # type: ignore[operator]
        for body, *_ in TABLE:
            if body["mode"] == "ok" and body["x"] == 1:
                RELEASE.set()
                pause(1.2)  # the stuck call returns; the watchdog notices
            seen.append(ask(body))
    RELEASE.set()
    for (body, status, says, code), (got_status, text) in zip(TABLE, seen, strict=True):
        assert got_status == status, (body, text)
        assert says in text, (body, text)
        assert "secret" not in text
        if code is not None:
            assert json.loads(text)["code"] == code, (body, text)


class Piece(BaseModel):
    n: int


class StreamModel(ModelServer[Case, Piece]):
    def predict(self, item: Case) -> Iterator[Piece]:
        yield Piece(n=1)
        if item.mode == "raise":
            raise RuntimeError("secret: the stream broke")
        if item.mode == "refuse":
            raise InputError("the second piece of this case is refused")
        yield Piece(n=2)


@gpu_service(name="stream-split", route="/case", request_timeout=10)
class SplitStream(StreamModel):
    pass


@gpu_service(name="stream-colocated", topology="colocated", route="/case", request_timeout=10)
class ColocatedStream(StreamModel):
    pass


class JoiningStreamModel(ModelServer[Case, Piece]):
    """``StreamModel`` in the joining form: the kit steps every case in the batch at once."""

    def load(self) -> None:
        self.cases: dict[int, Case] = {}
        self.steps: dict[int, int] = {}

    def join(self, items: dict[int, Case]) -> dict[int, Piece]:
        self.cases.update(items)
        self.steps.update(dict.fromkeys(items, 0))
        return {key: Piece(n=1) for key in items}

    def step(self) -> dict[int, object]:
        answers: dict[int, object] = {}
        for key, case in self.cases.items():
            self.steps[key] += 1
            if self.steps[key] > 1:
                answers[key] = END
            elif case.mode == "raise":
                answers[key] = RuntimeError("secret: the stream broke")
            elif case.mode == "refuse":
                answers[key] = InputError("the second piece of this case is refused")
            else:
                answers[key] = Piece(n=2)
        return answers

    def leave(self, keys: list[int]) -> None:
        for key in keys:
            del self.cases[key], self.steps[key]


@gpu_service(name="joining-split", route="/case", request_timeout=10, max_batch_size=4)
class SplitJoining(JoiningStreamModel):
    pass


@gpu_service(
    name="joining-colocated",
    topology="colocated",
    route="/case",
    request_timeout=10,
    max_batch_size=4,
)
class ColocatedJoining(JoiningStreamModel):
    pass


# (request, what the stream ends with): chunks, then the end or an error event with its code.
STREAM_TABLE = [
    ({"mode": "ok"}, None),
    ({"mode": "raise"}, ("predict_failed", "predict failed; quote the request id")),
    ({"mode": "refuse"}, ("invalid_input", "the second piece of this case is refused")),
]


@pytest.mark.parametrize(
    ("path", "server_cls"),
    [
        (local, SplitStream),
        (split, SplitStream),
        (colocated, ColocatedStream),
        (local, SplitJoining),
        (split, SplitJoining),
        (colocated, ColocatedJoining),
    ],
    ids=["local", "split", "colocated", "local-joining", "split-joining", "colocated-joining"],
)
def test_every_path_ends_a_failed_stream_with_the_same_coded_error_event(path, server_cls):
    with path(server_cls) as (ask, _):
        seen = [ask(body) for body, _ in STREAM_TABLE]
    for (body, ends), (status, text) in zip(STREAM_TABLE, seen, strict=True):
        assert status == 200, (body, text)
        events = [e for e in text.split("\n\n") if e]
        assert events[0] == 'data: {"n":1}', (body, text)
        assert "secret" not in text
        if ends is None:
            assert events[1:] == ['data: {"n":2}'], (body, text)
            continue
        (error,) = events[1:]
        assert error.startswith("event: error\ndata: "), (body, text)
        said = json.loads(error.split("data: ", 1)[1])
        assert (said["code"], said["request_id"] is not None) == (ends[0], True)
        assert ends[1] in said["detail"]
