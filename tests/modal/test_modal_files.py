"""Files on every Modal topology, offline, with Modal's own objects.

Split: the web tier's ``ModalBackend`` and the GPU class's generated methods (run by
``ModalContainer`` as a container runs them) exchange requests, file answers and stream chunks
through Modal's own serializer (pickle, Modal's default, and CBOR). Colocated and server: the
kit's app in the container serves a file request over HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from modal._runtime.user_code_imports import _get_cls_or_user_cls
from modal._serialization import deserialize_data_format, serialize_data_format
from modal_proto import api_pb2

from modal_fastapi_kit import File
from modal_fastapi_kit._backends.modal import ModalBackend
from modal_fastapi_kit._config import DEFAULT_FILE_MAX_BODY_BYTES, DEFAULT_MAX_BODY_BYTES
from modal_fastapi_kit._core.spec import service_spec
from modal_fastapi_kit._core.wire import decode_outcome, encode_request
from modal_fastapi_kit._file import FileAnswer
from modal_fastapi_kit._modal import server_container
from modal_fastapi_kit._modal.build import deployment
from modal_fastapi_kit.exceptions import ErrorCode, InputError
from tests.modal.file_services import (
    Clip,
    Collage,
    ColocatedThumbs,
    Flip,
    Frame,
    Frames,
    Photo,
    Photos,
    Seen,
    SerializedHandle,
    ServerThumbs,
    Sheet,
    Thumbs,
)
from tests.modal_container import ModalContainer
from tests.modal_server_container import ModalServerContainer

pytestmark = pytest.mark.timeout(60)

PICKLE = api_pb2.DATA_FORMAT_PICKLE
FORMATS = pytest.mark.parametrize(
    "data_format", [PICKLE, api_pb2.DATA_FORMAT_CBOR], ids=["pickle", "cbor"]
)
IMAGE = bytes(range(256)) * 1200  # 300 KiB
BIG = bytes(range(251)) * (3 * 1024 * 1024 // 251)  # about 3 MiB: over 1 MiB and Modal's 2 MiB


def data_uri(data: bytes, content_type: str) -> str:
    return f"data:{content_type};base64,{base64.b64encode(data).decode()}"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def across(value: Any) -> Any:
    """``value`` as the other side of a Modal call receives it (pickled by Modal)."""
    return deserialize_data_format(serialize_data_format(value, PICKLE), PICKLE, None)


async def post_json(app: Any, path: str, body: dict[str, Any]) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://c") as client:
        return await client.post(path, json=body)


async def through_backend(backend: ModalBackend, item: Any) -> Any:
    """``item`` through the web tier's backend, as the router sends it; a stream's chunks."""
    await backend.start()
    loop = asyncio.get_running_loop()
    try:
        answer = await backend.submit(item, deadline=loop.time() + 20)
        if not backend.spec.streaming:
            return answer
        chunks = []
        while True:
            try:
                chunks.append(await answer.next(20))
            except StopAsyncIteration:
                return chunks
    finally:
        await backend.stop()


# -- split: requests --------------------------------------------------------------------------


@FORMATS
def test_a_file_request_crosses_the_split_tiers_as_bytes_beside_the_json(data_format):
    Seen.reset()
    with ModalContainer(Thumbs) as container:
        handle = SerializedHandle(container, data_format)
        app = Thumbs.asgi_app(backend="modal", handle=handle)
        body = {"image": data_uri(IMAGE, "image/png"), "caption": "cat"}
        with container.serving(app):
            response = container.run(post_json(app, "/describe", body))
    assert response.status_code == 200, response.text
    assert response.json() == {
        "size": len(IMAGE),
        "sha256": sha(IMAGE),
        "content_type": "image/png",
        "filename": None,
        "caption": "cat",
    }
    (sent,) = handle.sent
    # The bytes themselves: as base64 the input would be a third longer than the file.
    assert len(IMAGE) < len(sent) < len(IMAGE) + 1024
    assert b"base64" not in sent
    assert b"modal_fastapi_kit" not in sent  # plain data: no class of the kit to unpickle


def test_several_files_go_in_one_batch_in_memory_and_their_copies_go_after_it():
    assert (
        _get_cls_or_user_cls(
            api_pb2.Function(
                module_name="tests.modal.file_services",
                implementation_name="Thumbs.*",
                definition_type=api_pb2.Function.DEFINITION_TYPE_FILE,
            ),
            None,
        )
        is Thumbs
    )
    images = [bytes([i]) * (1000 * (i + 1)) for i in range(3)]
    items = [
        Photo(image=File(data, content_type="image/png", filename=f"p{i}.png"), caption=str(i))
        for i, data in enumerate(images)
    ]
    wires = [encode_request(item) for item in items]
    assert wires[1] == {
        "request": {"image": "mfk-file:0", "caption": "1"},
        "files": [(images[1], "image/png", "p1.png")],
    }
    Seen.reset()
    with ModalContainer(Thumbs) as container:
        answers = container.call("mfk_predict", across(wires))
    assert Seen.batches == [3]  # one predict_batch for the three files
    assert answers == [
        {
            "ok": {
                "size": len(data),
                "sha256": sha(data),
                "content_type": "image/png",
                "filename": f"p{i}.png",
                "caption": str(i),
            }
        }
        for i, data in enumerate(images)
    ]
    # Each file was read through ``path``: a temporary copy while predict ran, gone after.
    assert [existed for _, existed in Seen.paths] == [True, True, True]
    assert all(path.name.startswith("mfk-") for path, _ in Seen.paths)  # not a file of the caller
    assert all(path.suffix == ".png" and not path.exists() for path, _ in Seen.paths)


def test_a_request_from_an_older_web_tier_still_decodes():
    """An older web tier sends the bare request JSON, a file in it as a data: URI."""
    Seen.reset()
    older = {"image": data_uri(b"older", "image/gif"), "caption": "v0"}
    with ModalContainer(Thumbs) as container:
        (answer,) = container.call("mfk_predict", across([older]))
    assert answer == {
        "ok": {
            "size": 5,
            "sha256": sha(b"older"),
            "content_type": "image/gif",
            "filename": None,
            "caption": "v0",
        }
    }


GOOD = {"request": {"image": "mfk-file:0", "caption": "ok"}, "files": [(b"x", "image/png", None)]}


@pytest.mark.parametrize(
    ("envelope", "says"),
    [
        (
            {"request": {"image": "mfk-file:1"}, "files": [(b"x", "image/png", None)]},
            "image names 'mfk-file:1', but the envelope carries 1 file(s)",
        ),
        (
            {"request": {"image": "mfk-file:0"}, "files": []},
            "image names 'mfk-file:0', but the envelope carries 0 file(s)",
        ),
        ({"image": "mfk-file:0"}, "image names 'mfk-file:0', but the envelope carries 0 file(s)"),
        (
            {"request": {"image": "mfk-file:0"}, "files": [("x", "image/png")]},
            "file 0 of the envelope is not (bytes, content type, file name)",
        ),
        ({"request": {"image": "mfk-file:0"}, "files": "x"}, "the envelope's files are a str"),
    ],
    ids=["index-out-of-range", "file-missing", "marker-without-files", "bad-entry", "not-a-list"],
)
def test_an_envelope_naming_a_missing_file_is_that_item_s_error(envelope, says):
    Seen.reset()
    with ModalContainer(Thumbs) as container:
        bad, good = container.call("mfk_predict", across([envelope, GOOD]))
    assert bad["error"]["code"] == "predict_failed"
    assert bad["error"]["status"] == 500
    assert says in bad["error"]["detail"]
    assert "deploy both tiers from the same code" in bad["error"]["detail"]
    assert good["ok"]["sha256"] == sha(b"x")  # the rest of the batch is answered
    assert Seen.batches == [1]


def test_the_gpu_tier_checks_a_file_field_s_limits_again():
    envelope = {"request": {"image": "mfk-file:0"}, "files": [(b"text", "text/plain", "a.txt")]}
    with ModalContainer(Thumbs) as container:
        (answer,) = container.call("mfk_predict", across([envelope]))
    assert answer["error"]["code"] == "unsupported_media_type"
    assert answer["error"]["status"] == 415
    error = decode_outcome(Thumbs.response_model, answer)  # as the web tier reads it
    assert isinstance(error, InputError)
    assert error.status_code == 415 and error.code is ErrorCode.UNSUPPORTED_MEDIA_TYPE
    assert "image/*" in error.detail


# -- split: answers and chunks ----------------------------------------------------------------


@FORMATS
def test_a_file_answer_comes_back_as_bytes_beside_the_json(data_format):
    with ModalContainer(Flip) as container:
        (envelope,) = container.call(
            "mfk_predict",
            across([encode_request(Photo(image=File(b"abc", content_type="image/gif")))]),
        )
        handle = SerializedHandle(container, data_format)
        answer = container.run(
            through_backend(
                ModalBackend(service_spec(Flip), handle=handle),
                Photo(image=File(IMAGE, content_type="image/png", filename="in.png")),
            )
        )
    assert envelope == {"ok": "mfk-file:0", "files": [(b"cba", "image/png", "flipped.png")]}
    assert isinstance(answer, FileAnswer)
    assert answer.root.read() == IMAGE[::-1]
    assert (answer.root.content_type, answer.root.filename) == ("image/png", "flipped.png")


def test_an_answer_whose_file_cannot_be_read_fails_alone():
    items = [
        Photo(image=File(b"ab", content_type="image/png"), caption=c) for c in ("unsendable", "")
    ]
    with ModalContainer(Flip) as container:
        failed, answered = container.call("mfk_predict", across([encode_request(i) for i in items]))
    assert failed["error"]["code"] == "predict_failed"
    assert "could not be sent to the web tier" in failed["error"]["detail"]
    assert answered == {"ok": "mfk-file:0", "files": [(b"ba", "image/png", "flipped.png")]}


def test_files_inside_a_response_model_come_back_in_their_places():
    photos = Photos(images=[File(b"ab", filename="a.txt"), File(b"cd", content_type="text/csv")])
    with ModalContainer(Collage) as container:
        envelope = container.call("mfk_predict", across(encode_request(photos)))
        sheet = container.run(
            through_backend(
                ModalBackend(service_spec(Collage), handle=SerializedHandle(container, PICKLE)),
                photos,
            )
        )
    assert envelope["ok"] == {
        "pages": ["mfk-file:0", "mfk-file:1"],
        "cover": "mfk-file:2",
        "count": 2,
    }
    assert [entry[0] for entry in envelope["files"]] == [b"AB", b"CD", b"ab"]
    assert isinstance(sheet, Sheet)
    assert [page.read() for page in sheet.pages] == [b"AB", b"CD"]
    assert sheet.cover is not None
    assert (sheet.cover.read(), sheet.cover.filename) == (b"ab", "a.txt")


@FORMATS
def test_a_stream_s_chunks_carry_their_files(data_format):
    clip = Clip(video=File(b"0123456789", content_type="video/mp4"), frames=2)
    Seen.reset()
    with ModalContainer(Frames) as container:
        envelopes = list(container.stream("mfk_stream", across(encode_request(clip))))
        chunks = container.run(
            through_backend(
                ModalBackend(service_spec(Frames), handle=SerializedHandle(container, data_format)),
                clip,
            )
        )
        older = list(
            container.stream("mfk_stream", {"video": data_uri(b"abcd", "video/mp4"), "frames": 1})
        )
    assert envelopes == [
        {"chunk": {"index": 0, "image": "mfk-file:0"}, "files": [(b"02468", "image/jpeg", None)]},
        {"chunk": {"index": 1, "image": "mfk-file:0"}, "files": [(b"13579", "image/jpeg", None)]},
    ]
    assert all(isinstance(chunk, Frame) for chunk in chunks)
    assert [(c.index, c.image.read(), c.image.content_type) for c in chunks] == [
        (0, b"02468", "image/jpeg"),
        (1, b"13579", "image/jpeg"),
    ]
    # A temporary copy of the request's file while the stream ran, removed when it ended.
    assert [existed for _, existed in Seen.paths] == [True, True, True]
    assert all(path.name.startswith("mfk-") and not path.exists() for path, _ in Seen.paths)
    assert older == [
        {"chunk": {"index": 0, "image": "mfk-file:0"}, "files": [(b"ac", "image/jpeg", None)]}
    ]


def test_a_stream_request_naming_a_missing_file_answers_one_error_chunk():
    with ModalContainer(Frames) as container:
        envelopes = list(
            container.stream(
                "mfk_stream", {"request": {"video": "mfk-file:3", "frames": 1}, "files": []}
            )
        )
    assert len(envelopes) == 1
    assert envelopes[0]["error"]["code"] == "predict_failed"
    assert "video names 'mfk-file:3'" in envelopes[0]["error"]["detail"]


# -- colocated and server: the kit's app in the container -------------------------------------


def test_a_file_service_takes_bodies_above_the_general_limit_on_every_topology():
    for cls in (Thumbs, ColocatedThumbs, ServerThumbs):
        assert deployment(cls).config.max_body_bytes == DEFAULT_FILE_MAX_BODY_BYTES
    assert len(data_uri(BIG, "image/jpeg")) > DEFAULT_MAX_BODY_BYTES


def test_the_colocated_app_serves_a_file_request():
    Seen.reset()
    with ModalContainer(ColocatedThumbs) as container, container.web_app() as app:
        response = container.run(
            post_json(app, "/describe", {"image": data_uri(BIG, "image/jpeg"), "caption": "big"})
        )
    assert response.status_code == 200, response.text
    assert response.json()["sha256"] == sha(BIG)
    assert response.json()["size"] == len(BIG)
    assert Seen.batches == [1]


@pytest.mark.e2e  # serves on a real 127.0.0.1 port
def test_the_server_serves_a_file_request_over_http(monkeypatch):
    monkeypatch.setattr(server_container, "HOST", "127.0.0.1")
    port = deployment(ServerThumbs).config.port
    body = {"image": data_uri(BIG, "image/jpeg"), "caption": "big"}
    with ModalServerContainer(ServerThumbs) as container:
        response = container.serve_while(
            lambda: httpx.post(f"http://127.0.0.1:{port}/describe", json=body, timeout=30)
        )
    assert response.status_code == 200, response.text
    assert response.json()["sha256"] == sha(BIG)


def test_the_sizes_docs_deploy_md_gives_are_the_sdk_s():
    from modal._utils import blob_utils

    page = (Path(__file__).resolve().parents[2] / "docs" / "deploy.md").read_text()
    section = page.split("## Files on Modal")[1].split("\n## ")[0]
    assert blob_utils.MAX_OBJECT_SIZE_BYTES == 2 * 1024 * 1024
    assert "over 2 MiB (`MAX_OBJECT_SIZE_BYTES`)" in section
    assert blob_utils.MAX_ASYNC_OBJECT_SIZE_BYTES == 8 * 1024
    assert "over 8 KiB (`MAX_ASYNC_OBJECT_SIZE_BYTES`)" in section
    assert f"max_body_bytes` = {DEFAULT_FILE_MAX_BODY_BYTES // 2**20} MiB" in section
