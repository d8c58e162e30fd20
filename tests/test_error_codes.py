"""The table of error codes in docs/production.md is ``ERROR_CODES``, row for row, and the
README's table of what a client sees names only those codes, with their statuses."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from modal_fastapi_kit.exceptions import ERROR_CODES, ErrorCode

from ._servers import ROOT
from ._toys import Probe, doubler


def table_rows(text: str, heading: str) -> list[list[str]]:
    """The cells of the first markdown table after ``heading``."""
    after = text[text.index(heading) :]
    lines = after.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_the_documented_code_table_is_the_one_in_the_code():
    text = (ROOT / "docs" / "production.md").read_text()
    rows = table_rows(text, "## The error contract")
    documented = {}
    for code, status, exception, retry, _ in rows:
        documented[ErrorCode(code.strip("`"))] = (status, exception.strip("`"), retry)
    expected = {
        code: (
            "4xx" if info.status is None else str(info.status),
            info.error.__name__,
            info.retry.value,
        )
        for code, info in ERROR_CODES.items()
    }
    assert documented == expected


def test_the_readme_table_names_the_codes_with_their_status():
    text = (ROOT / "README.md").read_text()
    rows = table_rows(text, "## What a client sees")
    named = set()
    for situation, answer, code_cell in rows:
        for code in re.findall(r"`([a-z_]+)`", code_cell):
            info = ERROR_CODES[ErrorCode(code)]  # a name that is not a code fails here
            named.add(code)
            if info.status is not None and "event: error" not in answer:  # a stream's is 200
                assert str(info.status) in answer, (situation, answer, code)
    # every code the kit's own routes answer is in the README (refused is a user dependency's)
    assert named == {c.value for c in ErrorCode} - {"refused"}


def test_the_apps_the_kit_builds_answer_unknown_paths_and_methods_with_the_contract():
    app = doubler(Probe()).asgi_app()
    with TestClient(app) as client:
        missing = client.get("/nope", headers={"x-request-id": "r-404"})
        wrong = client.get("/double")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "Not Found", "code": "not_found", "request_id": "r-404"}
    assert missing.headers["x-request-id"] == "r-404"
    assert wrong.status_code == 405 and wrong.json()["code"] == "method_not_allowed"
    assert wrong.headers["allow"] == "POST"
