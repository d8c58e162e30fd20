"""``jobs=``: what is accepted, what is refused at decoration time and how it says so."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from modal_fastapi_kit import JobOptions, ModelServer, gpu_service
from modal_fastapi_kit._core.spec import service_spec
from modal_fastapi_kit._http.router import PREDICT_API
from modal_fastapi_kit.exceptions import ConfigError

from ..services.jobbers import Counter


class In(BaseModel):
    x: int


def test_jobs_true_takes_the_defaults_and_false_none():
    @gpu_service(name="on", jobs=True)
    class On(ModelServer[In, In]):
        def predict(self, item: In) -> In:
            return item

    @gpu_service(name="off", jobs=False)
    class Off(On):
        pass

    assert On.service_config().jobs == JobOptions()
    assert Off.service_config().jobs is None
    options = JobOptions()
    assert (options.run_timeout, options.retention, options.max_pending) == (3600, 86400, 1000)


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"run_timeout": 0}, "run_timeout=0"),
        ({"run_timeout": 90_000}, "Modal's limit per attempt"),
        ({"retention": 8 * 86_400}, "7 days"),
        ({"max_wait": 150}, "150 s web limit"),
        ({"max_pending": 0}, "max_pending=0"),
        ({"max_pending": True}, "max_pending=True"),
        ({"webhook_attempts": 50}, "from 1 to 20"),
        ({"webhook_secret_env": "not a name"}, "environment variable"),
        ({"store": ""}, "SQLite file"),
        ({"allow_private_webhooks": "yes"}, "True or False"),
    ],
)
def test_bad_job_options_say_what_and_how_to_fix(options, says):
    with pytest.raises(ConfigError, match="JobOptions") as refused:
        JobOptions(**options)
    assert says in str(refused.value)


def test_jobs_must_be_true_or_job_options():
    with pytest.raises(ConfigError, match=r"jobs='yes' is invalid: expected True, or JobOptions"):

        @gpu_service(name="wrong", jobs="yes")
        class Wrong(ModelServer[In, In]):
            def predict(self, item: In) -> In:
                return item


def test_the_openai_compatible_services_refuse_jobs():
    from modal_fastapi_kit.openai import EmbeddingServer

    with pytest.raises(ConfigError, match="OpenAI-compatible API and sets jobs"):

        @gpu_service(name="emb", jobs=True)
        class Emb(EmbeddingServer):
            def embed(self, texts: list[str]) -> list[list[float]]:
                return [[0.0] for _ in texts]


def test_mfk_check_lists_the_job_routes():
    assert PREDICT_API.route_paths(service_spec(Counter)) == [
        "POST /count",
        "POST /count/jobs",
        "GET /count/jobs/{id}",
        "GET /count/jobs/{id}/result",
        "POST /count/jobs/{id}/cancel",
    ]
