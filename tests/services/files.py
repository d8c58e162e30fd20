"""Services that take and answer files, for the HTTP tests of uploads (in-process and
under `mfk serve tests/services/files.py:Class`)."""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Iterator
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from modal_fastapi_kit import File, FileLimits, ModelServer, gpu_service

MiB = 1 << 20
BATCHES: list[int] = []  # the size of each batch Seer ran


class Photo(BaseModel):
    image: Annotated[File, FileLimits(max_bytes=30 * MiB, content_types=("image/*",))]
    note: str = ""


class Seen(BaseModel):
    size: int
    content_type: str
    filename: str | None
    sha256: str
    note: str
    batch: int


@gpu_service(
    name="seer",
    route="/see",
    max_batch_size=8,
    wait_ms=300,
    max_body_bytes=40 * MiB,
    upload_timeout=2,
)
class Seer(ModelServer[Photo, Seen]):
    """Batched; reads each image through ``File.path`` (a temporary copy on disk)."""

    def predict_batch(self, items: list[Photo]) -> list[Seen]:
        BATCHES.append(len(items))
        if len(items) == 1:
            time.sleep(0.2)  # a busy model: requests arriving meanwhile form the next batch
        seen = []
        for item in items:
            digest = hashlib.sha256()
            with item.image.path.open("rb") as reader:  # a temporary copy, removed after
                while piece := reader.read(MiB):
                    digest.update(piece)
            seen.append(
                Seen(
                    size=item.image.size,
                    content_type=item.image.content_type,
                    filename=item.image.filename,
                    sha256=digest.hexdigest(),
                    note=item.note,
                    batch=len(items),
                )
            )
        return seen


class AlbumIn(BaseModel):
    photos: list[Annotated[File, FileLimits(max_bytes=4096, content_types=("image/png",))]]
    title: str
    tags: list[str] = []
    year: int | None = None
    cover: File | None = None


class AlbumOut(BaseModel):
    title: str
    tags: list[str]
    year: int | None
    sizes: list[int]
    names: list[str | None]
    cover: int | None


@gpu_service(name="album", route="/album", max_batch_size=4, wait_ms=100, max_body_bytes=256 * 1024)
class Album(ModelServer[AlbumIn, AlbumOut]):
    """Multipart only: a list of files and fields beside them."""

    def predict_batch(self, items: list[AlbumIn]) -> list[AlbumOut]:
        return [
            AlbumOut(
                title=item.title,
                tags=item.tags,
                year=item.year,
                sizes=[len(p.read()) for p in item.photos],
                names=[p.filename for p in item.photos],
                cover=None if item.cover is None else item.cover.size,
            )
            for item in items
        ]


class Doc(BaseModel):
    doc: File
    pieces: int = Field(3, ge=1)


class Piece(BaseModel):
    index: int
    part: File


@gpu_service(name="pieces", route="/pieces")
class Pieces(ModelServer[Doc, Piece]):
    """Streams its input back in pieces, each a File (a data: URI in a chunk)."""

    def predict(self, item: Doc) -> Iterator[Piece]:
        data = item.doc.read()
        step = max(1, -(-len(data) // item.pieces))
        for index in range(0, len(data), step):
            part = File(data[index : index + step], content_type=item.doc.content_type)
            yield Piece(index=index // step, part=part)


class ThumbIn(BaseModel):
    image: Annotated[File, FileLimits(max_bytes=MiB, content_types=("image/*",))]
    size: Literal["small", "large"] = "small"  # large: 3 MiB from disk
    times: int = Field(default=1, ge=1, le=3)


@gpu_service(name="thumb", route="/thumb")
class Thumb(ModelServer[ThumbIn, File]):
    """Answers a file: the image's bytes reversed, ``times`` over, named after it; or,
    ``large``, 3 MiB from a spooled file on disk. Its form has no free-text field, so that
    schemathesis can tell valid forms from invalid ones (any text is a valid ``str``)."""

    def predict(self, item: ThumbIn) -> File:
        name = f"thumb-{item.image.filename or 'image'}"
        if item.size == "large":
            spooled = tempfile.SpooledTemporaryFile(max_size=MiB)  # noqa: SIM115
            block = bytes(range(256)) * 4096
            for _ in range(3):
                spooled.write(block)
            return File.from_fileobj(spooled, content_type="image/png", filename=name)
        data = item.image.read()[::-1] * item.times
        return File(data, content_type="image/png", filename=name)


class Linked(BaseModel):
    image: Annotated[File, FileLimits(urls=True, max_bytes=4096, content_types=("image/*",))]


class Got(BaseModel):
    size: int
    content_type: str
    filename: str | None
    sha256: str


@gpu_service(name="fetcher", route="/fetch", allow_private_urls=True)
class Fetcher(ModelServer[Linked, Got]):
    """Takes its image as a URL too (and may fetch it from 127.0.0.1)."""

    def predict(self, item: Linked) -> Got:
        data = item.image.read()
        return Got(
            size=len(data),
            content_type=item.image.content_type,
            filename=item.image.filename,
            sha256=hashlib.sha256(data).hexdigest(),
        )


@gpu_service(name="guarded-fetcher", route="/fetch")
class GuardedFetcher(Fetcher):
    """The same, with private addresses refused (the default)."""


class LinkedMany(BaseModel):
    images: list[Annotated[File, FileLimits(urls=True, content_types=("image/*",))]]


class Sizes(BaseModel):
    sizes: list[int]


@gpu_service(name="many-fetcher", route="/fetch", allow_private_urls=True, max_body_bytes=4500)
class ManyFetcher(ModelServer[LinkedMany, Sizes]):
    """Takes a list of pictures by URL: together at most max_body_bytes, 64 of them."""

    def predict(self, item: LinkedMany) -> Sizes:
        return Sizes(sizes=[image.size for image in item.images])
