"""mfk serve --reload: a change to the service file is served after a restart."""

from __future__ import annotations

import time

import httpx
import pytest

from .._servers import BIN, free_port, running, wait_ready

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SERVICE = """\
from pydantic import BaseModel

from modal_fastapi_kit import ModelServer, gpu_service


class In(BaseModel):
    x: int


class Out(BaseModel):
    y: int


@gpu_service(name="reloaded", route="/times")
class Times(ModelServer[In, Out]):
    def predict(self, item: In) -> Out:
        return Out(y=FACTOR * item.x)


FACTOR = {factor}
"""


def test_a_changed_file_is_served_after_the_reload(tmp_path):
    service = tmp_path / "times.py"
    service.write_text(SERVICE.format(factor=2))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running([str(BIN / "mfk"), "serve", f"{service}:Times", "--port", str(port), "--reload"]):
        wait_ready(base)
        assert httpx.post(f"{base}/times", json={"x": 5}).json() == {"y": 10}
        service.write_text(SERVICE.format(factor=3))
        deadline = time.monotonic() + 60
        answer: object = None
        while time.monotonic() < deadline:
            try:
                answer = httpx.post(f"{base}/times", json={"x": 5}).json()
            except httpx.TransportError:
                answer = None  # between the old process and the new one
            if answer == {"y": 15}:
                break
            time.sleep(0.2)
        assert answer == {"y": 15}
