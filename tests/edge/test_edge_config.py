"""Config options for custom domains and the origin lock, validated at decoration time."""

from __future__ import annotations

import pytest

from modal_fastapi_kit import ServiceConfig
from modal_fastapi_kit.exceptions import ConfigError


def _config(**options: object) -> ServiceConfig:
    return ServiceConfig.from_options({"name": "svc", **options})


@pytest.mark.parametrize(
    "domains",
    [["api.example.com"], ["*.example.com"], ["a.example.com", "b.example.org"], []],
)
def test_custom_domains_accepts_hostnames_and_wildcards(domains: list[str]) -> None:
    assert _config(custom_domains=domains).custom_domains == tuple(domains)


@pytest.mark.parametrize(
    "bad",
    ["https://api.example.com", "api.example.com/v1", "api.example.com:443", "localhost",
     "a..example.com", "*.*.example.com", "api.ex ample.com", "api.*.example.com"],
)  # fmt: skip
def test_custom_domains_rejects_what_is_not_a_hostname(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"custom_domains=.*hostnames such as"):
        _config(custom_domains=[bad])


def test_custom_domains_as_a_string_says_to_pass_a_list() -> None:
    with pytest.raises(ConfigError, match=r"custom_domains=\['api.example.com'\]"):
        _config(custom_domains="api.example.com")


def test_edge_options_are_recorded() -> None:
    config = _config(
        edge_secret_env="MFK_EDGE_SECRET",
        public_hosts=["api.example.com"],
        public_base_url="https://api.example.com",
    )
    assert config.edge_secret_env == "MFK_EDGE_SECRET"
    assert config.public_hosts == ("api.example.com",)


@pytest.mark.parametrize("bad", ["MFK-EDGE", "1SECRET", "", "has space"])
def test_edge_secret_env_must_be_an_env_var_name(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"edge_secret_env=.*environment variable"):
        _config(edge_secret_env=bad)


@pytest.mark.parametrize("bad", ["*.example.com", "https://api.example.com", "api.example.com:1"])
def test_public_hosts_are_plain_hostnames(bad: str) -> None:
    with pytest.raises(ConfigError, match="public_hosts="):
        _config(edge_secret_env="S", public_hosts=[bad])


def test_public_hosts_need_an_edge_secret() -> None:
    with pytest.raises(ConfigError, match="add edge_secret_env="):
        _config(public_hosts=["api.example.com"])


@pytest.mark.parametrize(
    "bad",
    ["api.example.com", "ftp://api.example.com", "https://api.example.com/v1",
     "https://api.example.com?x=1", "https://user@api.example.com"],
)  # fmt: skip
def test_public_base_url_is_scheme_and_host(bad: str) -> None:
    with pytest.raises(ConfigError, match="public_base_url="):
        _config(public_base_url=bad)
