"""``File`` and ``FileLimits``: what a file field accepts, refuses and answers, without a
server."""

from __future__ import annotations

import base64
import gc
import io
import pickle
import tempfile
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import BaseModel, ValidationError

from modal_fastapi_kit import File, FileLimits
from modal_fastapi_kit._file import WIRE_FILES, FileAnswer, file_fields, files_in
from modal_fastapi_kit.exceptions import ErrorCode, InputError

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))


class Photo(BaseModel):
    image: Annotated[File, FileLimits(max_bytes=100, content_types=("image/*",))]
    caption: str = ""


class Album(BaseModel):
    pages: list[File] = []
    cover: File | None = None
    link: Annotated[File, FileLimits(urls=True, content_types=("image/*",))] | None = None


def data_uri(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def test_a_data_uri_in_json_is_the_file():
    photo = Photo.model_validate_json(f'{{"image": "{data_uri(PNG)}"}}')
    assert photo.image.read() == PNG
    assert photo.image.content_type == "image/png"
    assert photo.image.size == len(PNG)


def test_a_file_in_a_json_answer_is_a_data_uri_and_reads_back():
    photo = Photo(image=File(PNG, content_type="image/png", filename="a.png"))
    text = photo.model_dump_json()
    assert data_uri(PNG) in text
    assert Photo.model_validate_json(text).image == photo.image


def test_a_percent_encoded_data_uri_and_one_without_a_type():
    assert Album.model_validate({"cover": "data:,a%20b"}).cover.read() == b"a b"  # type: ignore[union-attr]
    cover = Album.model_validate({"cover": "data:;base64,YWI="}).cover
    assert cover is not None and cover.content_type == "application/octet-stream"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("data:image/png;base64,@@@@", "base64 is not valid"),
        ("data:image/png;base64", "no ','"),
        ("data:nonsense;base64,YWI=", "not type/subtype"),
        ("not a file", "data: URI"),
        ("https://example.com/a.png", "does not take URLs"),
        (12, "data: URI string"),
    ],
)
def test_what_is_not_a_file_fails_validation_with_a_reason(value: object, says: str):
    with pytest.raises(ValidationError) as caught:
        Photo.model_validate({"image": value})
    assert says in str(caught.value)


def test_a_file_over_its_limit_is_a_413_before_it_is_decoded():
    big = data_uri(b"x" * 1000)
    with pytest.raises(InputError) as caught:
        Photo.model_validate_json(f'{{"image": "{big}"}}')
    assert (caught.value.status_code, caught.value.code) == (413, ErrorCode.FILE_TOO_LARGE)
    assert "over its limit of 100" in str(caught.value)


def test_a_file_of_a_refused_type_is_a_415_naming_what_the_field_takes():
    with pytest.raises(InputError) as caught:
        Photo(image=File(b"%PDF", content_type="application/pdf"))
    assert caught.value.status_code == 415
    assert caught.value.code == ErrorCode.UNSUPPORTED_MEDIA_TYPE
    assert "application/pdf" in str(caught.value) and "image/*" in str(caught.value)


@pytest.mark.parametrize(
    ("limits", "kind", "ok"),
    [
        (FileLimits(content_types=("image/*",)), "image/PNG; q=1", True),
        (FileLimits(content_types=("image/png",)), "image/jpeg", False),
        (FileLimits(content_types=("audio/wav", "audio/x-wav")), "audio/x-wav", True),
        (FileLimits(), "anything/at-all", True),
    ],
)
def test_content_types_match_exactly_or_by_family(limits: FileLimits, kind: str, ok: bool):
    assert limits.accepts(kind) is ok


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_bytes": 0},
        {"max_bytes": "1MB"},
        {"content_types": "image/*"},
        {"content_types": ("png",)},
        {"content_types": ("*/*",)},
        {"url_timeout": 0},
    ],
)
def test_bad_limits_are_refused_with_the_fix(kwargs: dict[str, object]):
    with pytest.raises(ValueError, match="FileLimits"):
        FileLimits(**kwargs)  # type: ignore[arg-type]


def test_a_url_is_taken_only_where_allowed_and_stays_pending_until_fetched():
    album = Album.model_validate_json('{"link": "https://example.com/p/cat.png?x=1"}')
    link = album.link
    assert link is not None and link.url == "https://example.com/p/cat.png?x=1"
    assert link.filename == "cat.png"
    assert link.url_limits == FileLimits(urls=True, content_types=("image/*",))
    with pytest.raises(RuntimeError, match="has not been downloaded"):
        link.read()
    link.resolve(File(PNG, content_type="image/png"))
    assert (link.url, link.read(), link.content_type) == (None, PNG, "image/png")


def test_file_fields_finds_single_optional_listed_and_annotated_files():
    fields = {f.name: f for f in file_fields(Album)}
    assert set(fields) == {"pages", "cover", "link"}
    assert fields["pages"].many and not fields["cover"].many
    assert fields["link"].limits.urls and not fields["cover"].required
    (image,) = file_fields(Photo)
    assert image.required and image.limits.max_bytes == 100


def test_files_in_walks_models_lists_and_dicts():
    a, b = File(b"a"), File(b"b")
    album = Album(pages=[a], cover=b)
    assert list(files_in({"x": [album]})) == [a, b]


def test_between_tiers_a_file_travels_as_bytes_beside_the_json():
    photo = Photo(image=File(PNG, content_type="image/png"), caption="hi")
    files: list[File] = []
    wire = photo.model_dump(mode="json", context={WIRE_FILES: files})
    assert wire == {"image": "mfk-file:0", "caption": "hi"}
    back = Photo.model_validate(wire, context={WIRE_FILES: files})
    assert back.image is files[0]
    # without the files, the marker is not a file
    with pytest.raises(ValidationError):
        Photo.model_validate(wire)


def test_a_file_answer_is_a_root_model_of_the_file():
    file = File(PNG, content_type="image/png")
    answer = FileAnswer.model_validate(file)
    assert answer.root is file


def test_path_gives_a_disk_copy_removed_by_close_and_by_collection():
    file = File(PNG, content_type="image/png", filename="cat.png")
    path = file.path
    assert path.suffix == ".png" and path.read_bytes() == PNG
    file.close()
    assert not path.exists()
    other = File(PNG, content_type="image/png")
    kept = other.path
    assert kept.suffix == ".png"
    del other
    gc.collect()
    assert not kept.exists()


def test_a_spooled_upload_is_read_in_pieces_and_owned_by_the_file():
    spool = tempfile.SpooledTemporaryFile(max_size=16)  # noqa: SIM115 (the File owns it)
    spool.write(b"0123456789" * 10)
    file = File.from_fileobj(spool, content_type="text/plain", filename="n.txt")
    assert file.size == 100
    assert b"".join(file.chunks(7)) == b"0123456789" * 10
    with file.open() as reader:  # closing a reader leaves the file readable
        assert reader.read(3) == b"012"
    assert file.read()[:3] == b"012"
    assert file.path.read_bytes() == b"0123456789" * 10
    file.close()
    assert spool.closed


def test_from_path_reads_lazily_and_guesses_the_type(tmp_path: Path):
    where = tmp_path / "page.pdf"
    where.write_bytes(b"%PDF-1.7")
    file = File.from_path(where)
    assert (file.content_type, file.filename, file.size, file.path) == (
        "application/pdf",
        "page.pdf",
        8,
        where,
    )
    with pytest.raises(FileNotFoundError, match="is not a file"):
        File.from_path(tmp_path / "missing.pdf")


def test_files_pickle_as_their_bytes_and_compare_by_content():
    spool = io.BytesIO(PNG)
    file = File.from_fileobj(spool, content_type="image/png", filename="a.png")
    copy = pickle.loads(pickle.dumps(file))
    assert copy == file and copy.filename == "a.png"
    assert File(PNG, content_type="image/png") != File(PNG, content_type="image/gif")
    with pytest.raises(TypeError, match=r"File\.from_path"):
        File("a string")  # type: ignore[arg-type]


def test_limits_around_a_list_or_an_optional_apply_to_each_file():
    limits = FileLimits(max_bytes=5, content_types=("image/*",))

    class Pages(BaseModel):
        pages: Annotated[list[File], limits] = []
        cover: Annotated[File | None, limits] = None

    fields = {f.name: f for f in file_fields(Pages)}
    assert fields["pages"].many and fields["pages"].limits == limits
    assert Pages(cover=None).cover is None
    assert Pages(pages=[File(b"ok", content_type="image/png")]).pages[0].read() == b"ok"
    with pytest.raises(InputError, match="over its limit of 5"):
        Pages(pages=[File(b"0123456789", content_type="image/png")])
    schema = Pages.model_json_schema()["properties"]
    assert (
        schema["pages"]["type"] == "array"
        and "at most 5" in schema["pages"]["items"]["description"]
    )
    assert {"type": "null"} in schema["cover"]["anyOf"]


def test_limits_on_a_field_that_is_not_a_file_are_refused():
    with pytest.raises(TypeError, match="FileLimits annotates a File field"):

        class Wrong(BaseModel):
            count: Annotated[int, FileLimits(max_bytes=1)]
