from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._sdk import OPEN


@pytest.fixture(autouse=True)
def _close_sdk_clients() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()
