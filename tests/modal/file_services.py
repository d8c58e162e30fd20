"""Toy services that take and answer files, at module level so Modal finds them by name, and a
stand-in for the deployed class that sends every call through Modal's own serializer."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, ClassVar

from modal._serialization import deserialize_data_format, serialize_data_format
from pydantic import BaseModel

from modal_fastapi_kit import File, FileLimits, ModelServer, gpu_service
from tests._servers import free_port
from tests.modal_container import ModalContainer


class Photo(BaseModel):
    image: Annotated[File, FileLimits(content_types=("image/*",))]
    caption: str = ""


class Described(BaseModel):
    size: int
    sha256: str
    content_type: str
    filename: str | None
    caption: str


class Seen:
    """What the GPU side's predict saw: batch sizes, the paths it read the files from, and the
    files themselves (kept, so that only ``close()`` removes their copies, not collection)."""

    batches: ClassVar[list[int]] = []
    paths: ClassVar[list[tuple[Path, bool]]] = []
    files: ClassVar[list[File]] = []

    @classmethod
    def reset(cls) -> None:
        cls.batches.clear()
        cls.paths.clear()
        cls.files.clear()


def describe(item: Photo) -> Described:
    """Read the file through ``path``, as a library that wants a file on disk does."""
    path = item.image.path
    Seen.paths.append((path, path.exists()))
    Seen.files.append(item.image)
    data = path.read_bytes()
    return Described(
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        content_type=item.image.content_type,
        filename=item.image.filename,
        caption=item.caption,
    )


@gpu_service(name="file-thumbs", route="/describe", gpu="L4", max_batch_size=8, wait_ms=1)
class Thumbs(ModelServer[Photo, Described]):
    """Split, batched: a request carrying a file, answered with JSON."""

    def predict_batch(self, items: list[Photo]) -> list[Described]:
        Seen.batches.append(len(items))
        return [describe(item) for item in items]


@gpu_service(name="file-flip", route="/flip", gpu="L4", max_batch_size=4, wait_ms=1)
class Flip(ModelServer[Photo, File]):
    """Split, batched: answers a file (the bytes reversed); for the caption "unsendable" a
    file that cannot be read (a URL never downloaded)."""

    def predict_batch(self, items: list[Photo]) -> list[File]:
        return [flip(item) for item in items]


def flip(item: Photo) -> File:
    if item.caption == "unsendable":
        return File.pending("https://files.example/x.png", FileLimits(urls=True))
    return File(item.image.read()[::-1], content_type="image/png", filename="flipped.png")


class Photos(BaseModel):
    images: list[File]


class Sheet(BaseModel):
    pages: list[File]
    cover: File | None = None
    count: int


@gpu_service(name="file-sheet", route="/sheet", gpu="L4")
class Collage(ModelServer[Photos, Sheet]):
    """Split: File fields inside the response model (a list, and an optional one)."""

    def predict(self, item: Photos) -> Sheet:
        pages = [File(f.read().upper(), content_type="text/plain") for f in item.images]
        return Sheet(pages=pages, cover=item.images[0], count=len(pages))


class Clip(BaseModel):
    video: File
    frames: int


class Frame(BaseModel):
    index: int
    image: File


@gpu_service(name="file-frames", route="/frames", gpu="L4")
class Frames(ModelServer[Clip, Frame]):
    """Split, streaming: each chunk carries a file (a slice of the input)."""

    def predict(self, item: Clip) -> Iterator[Frame]:
        path = item.video.path
        Seen.paths.append((path, path.exists()))
        Seen.files.append(item.video)
        data = path.read_bytes()
        for index in range(item.frames):
            yield Frame(index=index, image=File(data[index::2], content_type="image/jpeg"))


@gpu_service(
    name="file-thumbs-colocated",
    route="/describe",
    gpu="L4",
    topology="colocated",
    max_batch_size=8,
    max_concurrent_inputs=8,
)
class ColocatedThumbs(ModelServer[Photo, Described]):
    def predict_batch(self, items: list[Photo]) -> list[Described]:
        Seen.batches.append(len(items))
        return [describe(item) for item in items]


@gpu_service(name="file-thumbs-server", route="/describe", topology="server", port=free_port())
class ServerThumbs(ModelServer[Photo, Described]):
    def predict(self, item: Photo) -> Described:
        return describe(item)


class SerializedHandle:
    """Stands in for the deployed ``modal.Cls``: every argument and answer goes through Modal's
    own serializer (``data_format``: pickle, Modal's default, or CBOR), as between two
    containers, and ``sent`` keeps each serialized input."""

    def __init__(self, container: ModalContainer, data_format: int) -> None:
        self.container = container
        self.data_format = data_format
        self.sent: list[bytes] = []

    def _across(self, value: Any) -> Any:
        return deserialize_data_format(
            serialize_data_format(value, self.data_format), self.data_format, None
        )

    def _send(self, payload: Any) -> Any:
        serialized = serialize_data_format(((payload,), {}), self.data_format)
        self.sent.append(serialized)
        (received,), _ = deserialize_data_format(serialized, self.data_format, None)
        return received

    def __call__(self) -> SimpleNamespace:
        methods: dict[str, Any] = {}
        partials = self.container.partials
        if "mfk_predict" in partials:
            predict = self.container._finalized("mfk_predict")
            batched = bool(partials["mfk_predict"].params.batch_max_size)

            async def remote(payload: Any) -> Any:
                received = self._send(payload)
                answer = await predict.callable([received] if batched else received)
                return self._across(answer[0] if batched else answer)

            methods["mfk_predict"] = SimpleNamespace(remote=SimpleNamespace(aio=remote))
        if "mfk_stream" in partials:
            stream = self.container._finalized("mfk_stream")

            async def remote_gen(payload: Any) -> AsyncIterator[Any]:
                async for envelope in stream.callable(self._send(payload)):
                    yield self._across(envelope)

            methods["mfk_stream"] = SimpleNamespace(remote_gen=SimpleNamespace(aio=remote_gen))
        return SimpleNamespace(**methods)
