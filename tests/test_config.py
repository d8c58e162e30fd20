"""@gpu_service validates at decoration time, echoing the bad value and the fix."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import BaseModel

from modal_fastapi_kit import (
    HuggingFaceWeights,
    LocalWeights,
    ModelServer,
    RetryPolicy,
    ServiceConfig,
    gpu_service,
)
from modal_fastapi_kit._config import DEFAULT_ROUTE
from modal_fastapi_kit.exceptions import ConfigError

from ._toys import NumIn, NumOut


def decorate(**options: object) -> type[ModelServer[NumIn, NumOut]]:
    @gpu_service(**options)
    class Model(ModelServer[NumIn, NumOut]):
        def predict_batch(self, items: list[NumIn]) -> list[NumOut]:
            return [NumOut(y=i.x) for i in items]

    return Model


def test_config_is_recorded_frozen_with_defaults():
    cls = decorate(gpu="A10", max_batch_size=8)
    config = cls.service_config()
    assert isinstance(config, ServiceConfig)
    assert (config.gpu, config.max_batch_size, config.route) == ("A10", 8, DEFAULT_ROUTE)
    assert cls.request_model is NumIn and cls.response_model is NumOut
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_batch_size = 4  # type: ignore[misc]


def test_name_defaults_to_kebab_case_class_name():
    @gpu_service()
    class TextEmbedderV2(ModelServer[NumIn, NumOut]):
        def predict(self, item: NumIn) -> NumOut:
            return NumOut(y=item.x)

    assert TextEmbedderV2.service_config().name == "text-embedder-v2"


def test_sequences_are_normalised_to_tuples():
    config = decorate(
        gpu=["H100", "A100-80GB"], packages=["torch"], secrets=["hf"]
    ).service_config()
    assert config.gpu == ("H100", "A100-80GB")
    assert config.gpus == ("H100", "A100-80GB")
    assert config.packages == ("torch",)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_batchsize": 8}, "unknown option 'max_batchsize': did you mean max_batch_size=?"),
        ({"keep_warm": 1}, "use min_containers= instead"),
        ({"concurrency_limit": 4}, "use max_containers= instead"),
        ({"max_batch_size": 0}, "max_batch_size=0 is invalid: expected an int from 1 to 1000"),
        ({"max_batch_size": 1001}, "max_batch_size=1001"),
        ({"max_batch_size": True}, "max_batch_size=True"),
        ({"wait_ms": -1}, "wait_ms=-1 is invalid"),
        (
            {"route": "embed"},
            "route='embed' is invalid: a route starts with '/', e.g. route='/embed'",
        ),
        ({"route": "/embed/"}, "no trailing '/'"),
        ({"route": "/healthz"}, "other than /healthz and /readyz"),
        ({"gpu": "A10:x"}, "gpu='A10:x' has an invalid count 'x': write 'TYPE:N'"),
        ({"gpu": "A10:9"}, "N from 1 to 8"),
        ({"gpu": "A11"}, "unknown GPU type 'A11': did you mean 'A10'?"),
        ({"gpu": []}, "gpu=[] is invalid"),
        ({"name": "Embeddings API"}, "name='Embeddings API' is invalid"),
        ({"custom_domains": "api.example.com"}, "custom_domains=['api.example.com']"),
        ({"custom_domains": ["https://api.example.com"]}, "without scheme or path"),
        ({"packages": "torch"}, "pass a list: packages=['torch']"),
        ({"request_timeout": 200}, "Modal cuts web requests at 150 s"),
        ({"retries": 11}, "retries=11 is invalid"),
        ({"max_containers": 1, "min_containers": 2}, "max_containers=1"),
        ({"max_queue_size": 4, "max_batch_size": 8}, "max_queue_size=4"),
        ({"topology": "sidecar"}, "'split', 'colocated' or 'server'"),
        ({"volumes": {"weights": "vol"}}, "absolute mount path"),
        ({"python_version": "3.9"}, "python_version='3.9'"),
        ({"target_concurrent_inputs": 100}, "target_concurrent_inputs=100"),
    ],
)
def test_bad_options_fail_at_decoration_time(options, message):
    with pytest.raises(ConfigError) as info:
        decorate(**options)
    assert message in str(info.value)


def test_wildcard_custom_domains_and_gpu_fallback_list_are_accepted():
    config = decorate(custom_domains=["*.example.com", "api.example.com"], gpu=["h100", "A10G:2"])
    assert config.service_config().custom_domains == ("*.example.com", "api.example.com")


def test_retry_policy_is_validated():
    assert decorate(retries=RetryPolicy(max_retries=3)).service_config().retries == RetryPolicy(
        max_retries=3
    )
    with pytest.raises(ConfigError, match=r"RetryPolicy\.initial_delay=-1"):
        RetryPolicy(max_retries=1, initial_delay=-1)


def test_predict_missing():
    with pytest.raises(ConfigError, match="defines neither predict nor predict_batch"):

        @gpu_service()
        class Empty(ModelServer[NumIn, NumOut]):
            pass


def test_batching_needs_predict_batch():
    with pytest.raises(ConfigError, match=r"max_batch_size=8 but defines only predict"):

        @gpu_service(max_batch_size=8)
        class Single(ModelServer[NumIn, NumOut]):
            def predict(self, item: NumIn) -> NumOut:
                return NumOut(y=item.x)


def test_decorator_without_parentheses():
    with pytest.raises(ConfigError, match=r"without parentheses.*@gpu_service\(\)"):

        @gpu_service  # type: ignore[arg-type]
        class Bare(ModelServer[NumIn, NumOut]):
            def predict(self, item: NumIn) -> NumOut:
                return NumOut(y=item.x)


def test_only_model_server_subclasses():
    with pytest.raises(ConfigError, match="decorates a ModelServer subclass"):

        @gpu_service()  # type: ignore[type-var]
        class Plain:
            def predict(self, item: NumIn) -> NumOut:
                return NumOut(y=item.x)


def test_models_from_annotations_when_no_type_parameters():
    @gpu_service(max_batch_size=4)
    class Annotated(ModelServer):  # type: ignore[type-arg]
        def predict_batch(self, items: list[NumIn]) -> list[NumOut]:
            return [NumOut(y=i.x) for i in items]

    assert (Annotated.request_model, Annotated.response_model) == (NumIn, NumOut)


def test_models_from_an_intermediate_base():
    class Base(ModelServer[NumIn, NumOut]):
        pass

    @gpu_service()
    class Child(Base):
        def predict(self, item: NumIn) -> NumOut:
            return NumOut(y=item.x)

    assert Child.request_model is NumIn


def test_models_must_be_pydantic():
    with pytest.raises(ConfigError, match="does not say its request and response models"):

        @gpu_service()
        class Untyped(ModelServer):  # type: ignore[type-arg]
            def predict(self, item):  # type: ignore[no-untyped-def]
                return item

    class NotPydantic:
        pass

    with pytest.raises(ConfigError, match="is not a pydantic BaseModel"):

        @gpu_service()
        class Wrong(ModelServer[NotPydantic, NumOut]):  # type: ignore[type-var]
            def predict(self, item: NotPydantic) -> NumOut:
                return NumOut(y=1)


def test_undecorated_class_says_how_to_fix():
    class Raw(ModelServer[NumIn, NumOut]):
        def predict(self, item: NumIn) -> NumOut:
            return NumOut(y=item.x)

    with pytest.raises(ConfigError, match=r"add @gpu_service\(...\) above 'class Raw'"):
        Raw.service_config()


def test_subclass_of_decorated_class_needs_its_own_decorator():
    parent = decorate()

    class Sub(parent):  # type: ignore[misc, valid-type]
        pass

    with pytest.raises(ConfigError, match="is not decorated"):
        Sub.service_config()


class _Unused(BaseModel):
    pass


# -- weights= -----------------------------------------------------------------------------------

_SHA = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"


def _num_server() -> type:
    class Num(ModelServer[NumIn, NumOut]):
        def predict(self, item: NumIn) -> NumOut:
            raise NotImplementedError

    return Num


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: HuggingFaceWeights("sentence-transformers/all-MiniLM-L6-v2", revision="main"),
            r"revision='main'\) is not pinned: pass the full 40-character commit sha",
        ),
        (
            lambda: HuggingFaceWeights("owner/model", revision=_SHA[:12]),
            r"revision='c9745ed1d9f2'\) is not pinned",
        ),
        (
            lambda: HuggingFaceWeights("owner/model", revision=_SHA.upper()),
            r"is not pinned.*lowercase hex",
        ),
        (
            lambda: HuggingFaceWeights("https://huggingface.co/owner/model", revision=_SHA),
            r"repo_id='https://huggingface.co/owner/model'\) is not a Hugging Face repo id: "
            r"write 'owner/name'",
        ),
        (lambda: HuggingFaceWeights("owner/a/b", revision=_SHA), r"repo_id='owner/a/b'"),
        (lambda: HuggingFaceWeights("owner--x/m", revision=_SHA), r"repo_id='owner--x/m'"),
        (
            lambda: HuggingFaceWeights("owner/model", revision=_SHA, allow_patterns="*.json"),
            r"allow_patterns='\*.json'\) is a string; pass a list of glob patterns: "
            r"allow_patterns=\['\*.json'\]",
        ),
        (
            lambda: HuggingFaceWeights("owner/model", revision=_SHA, ignore_patterns=["*.bin", 3]),
            r"ignore_patterns=\['\*.bin', 3\]\) is invalid: expected a list of non-empty glob",
        ),
        (
            lambda: HuggingFaceWeights("owner/model", revision=_SHA, volume="no spaces"),
            r"volume='no spaces'\) is invalid: expected the name of a Modal Volume",
        ),
        (
            lambda: LocalWeights("/no/such/weights/dir"),
            r"directory='/no/such/weights/dir'\) is not a directory on this machine",
        ),
    ],
)
def test_weights_sources_are_validated_when_written(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


def test_local_weights_refuse_an_empty_directory(tmp_path):
    with pytest.raises(ConfigError, match=r"holds no files"):
        LocalWeights(tmp_path)


def test_weights_option_takes_a_source_and_says_how_to_write_one():
    with pytest.raises(
        ConfigError, match=r"weights='owner/model' is invalid.*HuggingFaceWeights\("
    ):
        gpu_service(weights="owner/model")(_num_server())


def test_weights_are_recorded_with_patterns_as_tuples():
    source = HuggingFaceWeights("owner/model", revision=_SHA, allow_patterns=["*.json"])
    config = gpu_service(weights=source)(_num_server()).service_config()
    assert config.weights is source and source.allow_patterns == ("*.json",)


def test_gpu_snapshot_needs_a_memory_snapshot():
    with pytest.raises(ConfigError, match=r"add enable_memory_snapshot=True"):
        gpu_service(enable_gpu_snapshot=True)(_num_server())
    with pytest.raises(ConfigError, match=r"enable_gpu_snapshot='yes': expected a bool"):
        gpu_service(enable_gpu_snapshot="yes")(_num_server())
