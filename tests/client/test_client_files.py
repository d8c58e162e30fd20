"""Files through the typed clients: an item with File fields goes as ``multipart/form-data``
(its parts read back here with the standard library's MIME parser, not httpx's), a file from
disk streams in pieces, a retry sends the same bytes, and a file answer comes back as a
``File``; blocking and asyncio alike. The end-to-end tests at the bottom run the same calls
against real services on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import tracemalloc
from collections.abc import AsyncIterator, Callable, Iterator
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from modal_fastapi_kit import File, FileLimits, ModelServer, gpu_service
from modal_fastapi_kit._client.files import SPOOL_BYTES, answer_filename, part_filename
from modal_fastapi_kit.client import AsyncServiceClient, ServiceClient
from modal_fastapi_kit.exceptions import ErrorCode, InputError, UpstreamError

from .._servers import ThreadedServer, wait_ready
from .test_decisions import Script, kit_answer

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


class Photo(BaseModel):
    image: Annotated[File, FileLimits(content_types=("image/*",))]
    caption: str
    scale: float = 1.0
    tags: list[str] = []
    note: str | None = None
    meta: dict[str, int] = {}


class Seen(BaseModel):
    filename: str | None
    content_type: str
    size: int
    caption: str
    scale: float
    tags: list[str]
    note: str | None


class Album(BaseModel):
    title: str
    pages: list[File]
    cover: File | None = None
    extras: list[File] = []


class Count(BaseModel):
    title: str
    sizes: list[int]
    cover: int | None


class Piece(BaseModel):
    index: int
    data: str


@gpu_service(name="photos", route="/photos")
class Photos(ModelServer[Photo, Seen]):
    def predict(self, item: Photo) -> Seen:
        image = item.image
        return Seen(
            filename=image.filename,
            content_type=image.content_type,
            size=len(image.read()),
            caption=item.caption,
            scale=item.scale,
            tags=item.tags,
            note=item.note,
        )


@gpu_service(name="albums", route="/albums")
class Albums(ModelServer[Album, Count]):
    def predict(self, item: Album) -> Count:
        cover = None if item.cover is None else item.cover.size
        return Count(title=item.title, sizes=[p.size for p in item.pages], cover=cover)


@gpu_service(name="flip", route="/flip")
class Flip(ModelServer[Photo, File]):
    """Answers the image's bytes reversed, as a file."""

    def predict(self, item: Photo) -> File:
        image = item.image
        return File(image.read()[::-1], content_type=image.content_type, filename="flipped.png")


@gpu_service(name="pieces", route="/pieces")
class Pieces(ModelServer[Photo, Piece]):
    """Streams the image's bytes, 256 at a time, as hex."""

    def predict(self, item: Photo) -> Iterator[Piece]:
        data = item.image.read()
        for index, start in enumerate(range(0, len(data), 256)):
            yield Piece(index=index, data=data[start : start + 256].hex())


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def call(
    kind: str,
    cls: type[Any],
    handler: Callable[[httpx.Request], httpx.Response] | httpx.MockTransport | Any,
    item: Any,
    **options: Any,
) -> Any:
    """``predict(item)`` through the blocking or the asyncio client over ``handler`` (a
    function, or a transport)."""
    transport = handler if hasattr(handler, "handle_request") else httpx.MockTransport(handler)
    if kind == "sync":
        http = httpx.Client(transport=transport, base_url="http://svc")
        with http, ServiceClient(cls, http_client=http, **options) as client:
            return client.predict(item)

    async def run() -> Any:
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://svc") as http,
            AsyncServiceClient(cls, http_client=http, **options) as client,
        ):
            return await client.predict(item)

    return asyncio.run(run())


def seen(**overrides: Any) -> httpx.Response:
    body = {
        "filename": "cat.png",
        "content_type": "image/png",
        "size": len(PNG),
        "caption": "a cat",
        "scale": 1.0,
        "tags": [],
        "note": None,
        **overrides,
    }
    return httpx.Response(200, json=body)


def form_parts(request: httpx.Request) -> list[Message]:
    """The parts of a ``multipart/form-data`` request, read by the standard library."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + request.content)
    assert message.is_multipart(), request.headers["content-type"]
    return list(message.iter_parts())  # type: ignore[attr-defined]


def described(part: Message) -> tuple[str | None, str | None, str | None, bytes]:
    """``(name, filename, content type or None, bytes)`` of one part."""
    name = part.get_param("name", header="content-disposition")
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    kind = part["content-type"]
    return str(name), part.get_filename(), None if kind is None else str(kind), payload


# --- what is sent -----------------------------------------------------------------------------


def test_an_item_with_a_file_is_multipart_a_part_per_file_and_a_field_per_field(kind):
    script = Script(seen())
    item = Photo(
        image=File(PNG, content_type="image/png", filename="cat.png"),
        caption="a cat, \"quoted\"\nand 'é'",
        scale=2.5,
        tags=["a", "b"],
        meta={"k": 1},
    )
    assert call(kind, Photos, script, item) == Seen.model_validate(seen().json())
    (request,) = script.requests
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert request.headers["accept"] == "application/json"
    assert int(request.headers["content-length"]) == len(request.content)
    parts = {described(p)[0]: described(p) for p in form_parts(request)}
    assert parts["image"] == ("image", "cat.png", "image/png", PNG)
    # a string as it is; anything else as its JSON text; a None the service defaults to: left out
    assert parts["caption"] == ("caption", None, None, "a cat, \"quoted\"\nand 'é'".encode())
    assert parts["scale"][3] == b"2.5"
    assert json.loads(parts["tags"][3]) == ["a", "b"]
    assert json.loads(parts["meta"][3]) == {"k": 1}
    assert set(parts) == {"image", "caption", "scale", "tags", "meta"}


def test_a_list_of_files_is_one_part_per_file_under_the_fields_name(kind):
    script = Script(httpx.Response(200, json={"title": "t", "sizes": [1, 2], "cover": 3}))
    pages = [File(b"1", content_type="text/plain"), File(b"22", filename="two.bin")]
    item = {"title": "t", "pages": pages, "cover": File(b"333", content_type="image/jpeg")}
    assert call(kind, Albums, script, item) == Count(title="t", sizes=[1, 2], cover=3)
    got = [described(p) for p in form_parts(script.requests[0])]
    assert got == [
        ("title", None, None, b"t"),
        ("pages", "pages.txt", "text/plain", b"1"),  # no name: the field's, and the type's end
        ("pages", "two.bin", "application/octet-stream", b"22"),
        ("cover", "cover.jpg", "image/jpeg", b"333"),
    ]


def test_an_item_without_files_goes_as_the_same_json_as_before(kind):
    # no file in the fields, a URL (the service downloads it), an empty list with no default
    script = Script(httpx.Response(200, json={"title": "t", "sizes": [], "cover": None}))
    call(kind, Albums, script, Album(title="t", pages=[]))
    (request,) = script.requests
    assert request.headers["content-type"] == "application/json"
    assert request.content == b'{"title":"t","pages":[],"cover":null,"extras":[]}'


def test_a_file_deeper_in_the_item_is_a_data_uri_in_json(kind):
    class Inner(BaseModel):
        file: File

    class Outer(BaseModel):
        inner: Inner

    @gpu_service(name="outer", route="/outer")
    class Deep(ModelServer[Outer, Count]):
        def predict(self, item: Outer) -> Count:
            return Count(title="", sizes=[item.inner.file.size], cover=None)

    script = Script(httpx.Response(200, json={"title": "", "sizes": [2], "cover": None}))
    call(kind, Deep, script, {"inner": {"file": File(b"hi", content_type="text/plain")}})
    assert script.requests[0].headers["content-type"] == "application/json"
    assert json.loads(script.requests[0].content) == {
        "inner": {"file": "data:text/plain;base64,aGk="}
    }


def test_a_file_the_field_refuses_is_refused_before_anything_is_sent(kind):
    script = Script(seen())
    with pytest.raises(InputError) as refused:
        call(kind, Photos, script, {"image": File(b"x", content_type="text/plain"), "caption": "c"})
    assert refused.value.code is ErrorCode.UNSUPPORTED_MEDIA_TYPE
    assert refused.value.status_code == 415 and refused.value.request_id is None
    assert script.requests == []


class Tagged(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    picture: File = Field(alias="img")
    level: int | None = 3
    label: str | None = None


@gpu_service(name="tagged", route="/tagged")
class Tags(ModelServer[Tagged, Count]):
    def predict(self, item: Tagged) -> Count:
        return Count(title=item.label or "", sizes=[item.picture.size], cover=item.level)


def test_form_fields_go_by_alias_and_a_none_they_cannot_say_goes_as_json(kind):
    answer = httpx.Response(200, json={"title": "", "sizes": [1], "cover": 4})
    script = Script(answer)
    call(kind, Tags, script, Tagged(picture=File(b"1", filename="p.bin"), level=4))
    got = [described(p) for p in form_parts(script.requests[0])]
    assert got == [
        ("level", None, None, b"4"),
        ("img", "p.bin", "application/octet-stream", b"1"),
    ]  # label: None, and so is its default: left out
    script = Script(answer)
    call(kind, Tags, script, Tagged(picture=File(b"1"), level=None))  # the default is 3
    assert script.requests[0].headers["content-type"] == "application/json"
    assert json.loads(script.requests[0].content) == {
        "picture": "data:application/octet-stream;base64,MQ==",
        "level": None,
        "label": None,
    }


def source(kind: str, tmp_path: Path) -> File:
    """``PNG`` as a file in memory, on disk, or spooled (as an upload is)."""
    if kind == "bytes":
        return File(PNG, content_type="image/png", filename="cat.png")
    on_disk = tmp_path / "cat.png"
    on_disk.write_bytes(PNG)
    if kind == "path":
        return File.from_path(on_disk)
    return File.from_fileobj(on_disk.open("rb"), content_type="image/png", filename="cat.png")


@pytest.mark.parametrize("backing", ["bytes", "path", "spooled"])
def test_a_retry_sends_the_same_bytes(kind, backing, tmp_path):
    file = source(backing, tmp_path)
    script = Script(
        kit_answer(ErrorCode.NOT_READY, "loading"),
        kit_answer(ErrorCode.QUEUE_FULL, "full"),
        seen(),
    )
    call(kind, Photos, script, Photo(image=file, caption="a cat"))
    first, *others = script.requests
    assert len(others) == 2
    assert all(r.content == first.content for r in others)
    assert all(r.headers["content-type"] == first.headers["content-type"] for r in others)
    assert described(form_parts(first)[-1]) == ("image", "cat.png", "image/png", PNG)
    assert file.read() == PNG  # the file is as it was, and still readable
    file.close()


class Sink(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Reads each request's body piece by piece, keeping only its size, largest piece and
    digest, and answers ``answer``."""

    def __init__(self, answer: Callable[[], httpx.Response]) -> None:
        self.answer = answer
        self.sizes: list[int] = []
        self.largest = 0
        self.digests: list[str] = []
        self.lengths: list[str | None] = []

    def _piece(self, digest: Any, piece: bytes) -> None:
        self.largest = max(self.largest, len(piece))
        self.sizes[-1] += len(piece)
        digest.update(piece)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sizes.append(0)
        self.lengths.append(request.headers.get("content-length"))
        digest = hashlib.sha256()
        assert isinstance(request.stream, httpx.SyncByteStream)
        for piece in request.stream:
            self._piece(digest, piece)
        self.digests.append(digest.hexdigest())
        return self.answer()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sizes.append(0)
        self.lengths.append(request.headers.get("content-length"))
        digest = hashlib.sha256()
        assert isinstance(request.stream, httpx.AsyncByteStream)
        async for piece in request.stream:
            self._piece(digest, piece)
        self.digests.append(digest.hexdigest())
        return self.answer()


@pytest.mark.parametrize("source", ["path", "spooled"])
def test_a_file_on_disk_streams_in_pieces_and_is_never_read_whole(kind, source, tmp_path):
    size = 24 << 20
    big = tmp_path / "big.bin"
    with big.open("wb") as out:
        for n in range(size >> 20):
            out.write(bytes([n]) * (1 << 20))
    if source == "path":
        file = File.from_path(big, content_type="image/x-big")
    else:
        file = File.from_fileobj(big.open("rb"), content_type="image/x-big", filename="big.bin")
    answers = iter([kit_answer(ErrorCode.NOT_READY, "loading"), seen(size=size)])
    sink = Sink(lambda: next(answers))
    tracemalloc.start()
    try:
        answer = call(kind, Photos, sink, Photo(image=file, caption="big"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert answer.size == size
    assert peak < size // 4, f"{peak} bytes held while sending a file of {size}"
    assert sink.largest <= 64 * 1024
    assert len(sink.sizes) == 2 and sink.sizes[0] == sink.sizes[1] > size
    assert sink.lengths == [str(sink.sizes[0])] * 2  # its length known up front, no chunking
    assert sink.digests[0] == sink.digests[1]
    file.close()


def test_one_reader_serves_every_attempt_and_is_closed_after_the_call(kind, tmp_path, monkeypatch):
    on_disk = tmp_path / "cat.png"
    on_disk.write_bytes(PNG)
    opened: list[Any] = []
    real_open = File.open

    def spying_open(self: File) -> Any:
        reader = real_open(self)
        opened.append(reader)
        return reader

    monkeypatch.setattr(File, "open", spying_open)
    script = Script(kit_answer(ErrorCode.NOT_READY, "x"), seen())
    call(kind, Photos, script, {"image": File.from_path(on_disk), "caption": "c"})
    assert len(script.requests) == 2
    assert len(opened) == 1 and opened[0].closed


# --- what comes back ---------------------------------------------------------------------------


def file_answer(data: bytes = b"GNP", **headers: str) -> Callable[[httpx.Request], httpx.Response]:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=data, headers={"x-request-id": "rid-f", **headers})

    return answer


def test_a_file_answer_is_a_file_with_its_type_and_name(kind):
    handler = file_answer(
        PNG,
        **{
            "content-type": "image/png",
            "content-disposition": "inline; filename=\"chat.png\"; filename*=UTF-8''ch%C3%A2t.png",
        },
    )
    got = call(kind, Flip, handler, Photo(image=File(PNG, content_type="image/png"), caption="c"))
    assert type(got) is File
    assert (got.read(), got.content_type, got.filename, got.size) == (
        PNG,
        "image/png",
        "chât.png",
        len(PNG),
    )
    got.close()


def test_a_file_answer_asks_for_any_type_and_keeps_the_reply(kind):
    script = Script(httpx.Response(200, content=b"{}", headers={"content-type": "text/x"}))
    item = Photo(image=File(PNG, content_type="image/png"), caption="c")
    if kind == "sync":
        http = httpx.Client(transport=httpx.MockTransport(script), base_url="http://svc")
        with http, Flip.client(http_client=http) as client:
            reply = client.predict_reply(item, request_id="r-9")
    else:

        async def run() -> Any:
            async with (
                httpx.AsyncClient(transport=httpx.MockTransport(script), base_url="http://s") as h,
                Flip.async_client(http_client=h) as client,
            ):
                return await client.predict_reply(item, request_id="r-9")

        reply = asyncio.run(run())
    assert script.requests[0].headers["accept"] == "*/*"
    # a file whose bytes happen to be JSON is still a file, not a parsed answer
    assert (reply.value.read(), reply.value.content_type, reply.value.filename) == (
        b"{}",
        "text/x",
        None,
    )
    assert (reply.request_id, reply.attempts) == ("r-9", 1)


class Pieces24(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A 24 MiB body in 1 MiB pieces, made as it is read."""

    size = 24 << 20

    def __iter__(self) -> Iterator[bytes]:
        for n in range(self.size >> 20):
            yield bytes([n]) * (1 << 20)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self:
            yield piece


def test_a_large_file_answer_goes_to_disk_and_needs_no_close(kind):
    expected = hashlib.sha256(b"".join(Pieces24())).hexdigest()
    item = Photo(image=File(PNG, content_type="image/png"), caption="c")
    tracemalloc.start()
    try:
        got = call(kind, Flip, lambda request: httpx.Response(200, stream=Pieces24()), item)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # what is held: at most SPOOL_BYTES before the body goes to disk, and a piece
    assert peak < SPOOL_BYTES + (4 << 20) < Pieces24.size, f"{peak} bytes held"
    assert got.size == Pieces24.size and got.content_type == "application/octet-stream"
    digest = hashlib.sha256()
    for piece in got.chunks():
        digest.update(piece)
    assert digest.hexdigest() == expected
    del got  # not closed: collected without a ResourceWarning (an error in this suite)
    gc.collect()


class Broken(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body that breaks off after its first piece."""

    def __iter__(self) -> Iterator[bytes]:
        yield b"GN"
        raise httpx.ReadError("reset")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b"GN"
        raise httpx.ReadError("reset")


def test_a_file_answer_that_breaks_off_is_retried_only_when_safe(kind):
    item = Photo(image=File(PNG, content_type="image/png"), caption="c")
    script = Script(httpx.Response(200, stream=Broken()), httpx.Response(200, content=b"GNP"))
    with pytest.raises(UpstreamError, match="may have run"):
        call(kind, Flip, script, item)
    assert len(script.requests) == 1
    script = Script(httpx.Response(200, stream=Broken()), httpx.Response(200, content=b"GNP"))
    assert call(kind, Flip, script, item, retry_unsafe=True).read() == b"GNP"
    assert len(script.requests) == 2


def test_an_error_answer_of_a_file_service_raises_by_its_code(kind):
    script = Script(kit_answer(ErrorCode.FILE_TOO_LARGE, "the file in 'image' is too big"))
    with pytest.raises(InputError) as caught:
        call(kind, Flip, script, Photo(image=File(PNG, content_type="image/png"), caption="c"))
    assert (caught.value.code, caught.value.status_code) == (ErrorCode.FILE_TOO_LARGE, 413)


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ('inline; filename="cat.png"', "cat.png"),
        ("inline; filename*=UTF-8''%E7%8C%AB.png", "猫.png"),
        ("inline; filename=\"x.png\"; filename*=utf-8''%C3%A9.png", "é.png"),
        ('attachment; filename="../../etc/passwd"', "passwd"),
        ('inline; filename="C:\\\\temp\\\\a.txt"', "a.txt"),
        ("inline", None),
        (None, None),
    ],
)
def test_the_name_of_a_file_answer(header, name):
    assert answer_filename(header) == name


def test_a_part_without_a_file_name_gets_the_fields_with_the_types_extension():
    assert part_filename("image", File(b"", content_type="image/png")) == "image.png"
    assert part_filename("doc", File(b"", content_type="application/x-unknown")) == "doc"
    assert part_filename("doc", File(b"", filename="a.pdf")) == "a.pdf"


def test_a_stream_with_a_file_input_sends_it_as_multipart(kind):
    events = "".join(
        f"data: {json.dumps({'index': i, 'data': 'ab'})}\n\n" for i in range(3)
    ).encode()
    script = Script(
        kit_answer(ErrorCode.NOT_READY, "loading"),
        httpx.Response(200, content=events, headers={"content-type": "text/event-stream"}),
    )
    item = Photo(image=File(PNG, content_type="image/png", filename="cat.png"), caption="c")
    transport = httpx.MockTransport(script)
    if kind == "sync":
        http = httpx.Client(transport=transport, base_url="http://svc")
        with http, Pieces.client(http_client=http) as client, client.stream(item) as chunks:
            got = list(chunks)
    else:

        async def run() -> list[Piece]:
            async with (
                httpx.AsyncClient(transport=transport, base_url="http://svc") as http,
                Pieces.async_client(http_client=http) as client,
                client.stream(item) as chunks,
            ):
                return [c async for c in chunks]

        got = asyncio.run(run())
    assert [p.index for p in got] == [0, 1, 2]
    first, second = script.requests
    assert first.content == second.content
    assert second.headers["accept"] == "text/event-stream"
    assert described(form_parts(second)[-1]) == ("image", "cat.png", "image/png", PNG)


# --- end to end: real services on 127.0.0.1 ---------------------------------------------------


@gpu_service(name="digest", route="/digest")
class Digest(ModelServer[Album, Count]):
    """The sizes of the pages, read in pieces, and a digest of them as the title."""

    def predict(self, item: Album) -> Count:
        digest = hashlib.sha256()
        for page in item.pages:
            for piece in page.chunks():
                digest.update(piece)
        return Count(title=digest.hexdigest(), sizes=[p.size for p in item.pages], cover=None)


@contextlib.contextmanager
def served(*services: type[Any]) -> Iterator[str]:
    app = FastAPI()
    for service in services:
        app.include_router(service.router())
    with ThreadedServer(app) as server:
        wait_ready(server.url, timeout=30)
        yield server.url


SERVICES = (Photos, Albums, Flip, Pieces, Digest, Tags)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with served(*SERVICES) as base:
        yield base


def e2e(kind: str, url: str, run: Callable[[Any], Any], cls: type[Any]) -> Any:
    """``run(client)`` with a blocking client, or ``await run(client)`` with an asyncio one."""
    if kind == "sync":
        with cls.client(url) as client:
            return run(client)

    async def go() -> Any:
        async with cls.async_client(url) as client:
            return await run(client)

    return asyncio.run(go())


@pytest.mark.e2e
def test_e2e_a_multipart_upload_reaches_predict_as_files_and_fields(kind, url):
    item = Photo(
        image=File(PNG, content_type="image/png", filename="chât.png"),
        caption='a "cat"\n',
        scale=2.5,
        tags=["a", "b"],
    )
    got = e2e(kind, url, lambda client: client.predict(item), Photos)
    assert got == Seen(
        filename="chât.png",
        content_type="image/png",
        size=len(PNG),
        caption='a "cat"\n',
        scale=2.5,
        tags=["a", "b"],
        note=None,
    )
    album = {"title": "t", "pages": [File(b"1"), File(b"22", filename="b.bin")], "cover": None}
    counted = e2e(kind, url, lambda client: client.predict(album), Albums)
    assert counted == Count(title="t", sizes=[1, 2], cover=None)


@pytest.mark.e2e
def test_e2e_fields_by_alias_and_nones(kind, url):
    for item, expected in [
        (Tagged(picture=File(b"1"), level=4, label="x"), Count(title="x", sizes=[1], cover=4)),
        (Tagged(picture=File(b"22"), level=None), Count(title="", sizes=[2], cover=None)),
        (Tagged(picture=File(b"333")), Count(title="", sizes=[3], cover=3)),
    ]:
        assert e2e(kind, url, lambda client, item=item: client.predict(item), Tags) == expected


@pytest.mark.e2e
def test_e2e_a_large_file_from_disk_arrives_whole(kind, url, tmp_path):
    big = tmp_path / "big.bin"
    expected = hashlib.sha256()
    with big.open("wb") as out:
        for n in range(12):
            piece = bytes([n]) * (1 << 20)
            out.write(piece)
            expected.update(piece)
    item = Album(title="", pages=[File.from_path(big), File(b"small")])
    got = e2e(kind, url, lambda client: client.predict(item), Digest)
    expected.update(b"small")
    assert got == Count(title=expected.hexdigest(), sizes=[12 << 20, 5], cover=None)


@pytest.mark.e2e
def test_e2e_a_file_answer_is_a_file(kind, url):
    item = Photo(image=File(PNG, content_type="image/png"), caption="c")
    reply = e2e(kind, url, lambda client: client.predict_reply(item, request_id="r-e2e"), Flip)
    assert type(reply.value) is File and reply.request_id == "r-e2e"
    assert (reply.value.read(), reply.value.content_type, reply.value.filename) == (
        PNG[::-1],
        "image/png",
        "flipped.png",
    )


@pytest.mark.e2e
def test_e2e_a_stream_with_a_file_input(kind, url):
    item = Photo(image=File(PNG, content_type="image/png"), caption="c")
    if kind == "sync":
        with Pieces.client(url) as client, client.stream(item) as chunks:
            got = list(chunks)
    else:

        async def run() -> list[Piece]:
            async with Pieces.async_client(url) as client, client.stream(item) as chunks:
                return [c async for c in chunks]

        got = asyncio.run(run())
    assert b"".join(bytes.fromhex(p.data) for p in got) == PNG
    assert [p.index for p in got] == list(range(len(got))) and len(got) == 5


@pytest.mark.e2e
def test_e2e_the_services_refusal_of_a_file_raises_by_its_code(kind, url):
    # built without validation, so that the client sends what the service refuses
    item = Photo.model_construct(image=File(b"text", content_type="text/plain"), caption="c")
    with pytest.raises(InputError) as refused:
        e2e(kind, url, lambda client: client.predict(item), Photos)
    assert refused.value.code is ErrorCode.UNSUPPORTED_MEDIA_TYPE
    assert refused.value.status_code == 415 and refused.value.request_id is not None
    assert "image/*" in refused.value.detail
