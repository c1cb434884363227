"""Configuration: validated before any I/O, errors name the path of the bad key."""

from __future__ import annotations

import pytest

from connectors.registry import Registry
from models.config import ConfigError, HostPort, Settings, interpolate_env
from switchboard.settings import settings_from_mapping


def load(data: dict[str, object], env: dict[str, str] | None = None) -> Settings:
    return settings_from_mapping(data, env or {}, Registry.default())


def test_defaults_match_the_contract() -> None:
    settings = load({})
    assert settings.kafka.bootstrap is None
    assert settings.kafka.topic_prefix == "sb"
    assert settings.kafka.delivery == "auto"
    assert settings.router.min_confidence == 0.5
    assert settings.router.departments[0] == "orders" and len(settings.router.departments) == 9
    assert settings.http.listen == HostPort("127.0.0.1", 8080)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"kafka": {"partitons": 3}}, "kafka.partitons: unknown key"),
        ({"http": {"listen": "localhost"}}, "http.listen: expected host:port"),
        ({"router": {"min_confidence": 2}}, "router.min_confidence: Input should be less than or equal to 1"),
        (
            {"channels": [{"name": "Bad Name", "type": "smtp"}]},
            "channels[0].name: String should match pattern",
        ),
        (
            {"channels": [{"name": "x", "type": "carrier-pigeon"}]},
            "channels[0].type: unknown channel type 'carrier-pigeon'",
        ),
        (
            {
                "channels": [
                    {"name": "a", "type": "webhook", "secret": "s"},
                    {"name": "a", "type": "webhook", "secret": "s"},
                ]
            },
            "channels[1].name: 'a' is already used by channels[0]",
        ),
    ],
)
def test_a_bad_key_is_named_by_its_path(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(data)
    assert any(line.startswith(message) for line in caught.value.lines), caught.value.lines


def test_environment_variables_are_interpolated_and_missing_ones_name_the_key() -> None:
    tree = {"kafka": {"bootstrap": "${BROKER}"}, "channels": [{"password": "pw-${IMAP_PW}"}]}
    assert interpolate_env(tree, {"BROKER": "k:9092", "IMAP_PW": "s3"}) == {
        "kafka": {"bootstrap": "k:9092"},
        "channels": [{"password": "pw-s3"}],
    }
    with pytest.raises(
        ConfigError, match=r"channels\[0\]\.password: environment variable IMAP_PW is not set"
    ):
        interpolate_env(tree, {"BROKER": "k:9092"})


def test_environment_overrides_bootstrap_and_prefix() -> None:
    settings = load(
        {"kafka": {"bootstrap": "file:9092", "topic_prefix": "file"}},
        {"SWITCHBOARD_KAFKA_BOOTSTRAP": "env:9092", "SWITCHBOARD_TOPIC_PREFIX": "env"},
    )
    assert (settings.kafka.bootstrap, settings.kafka.topic_prefix) == ("env:9092", "env")


def test_secrets_do_not_print() -> None:
    settings = load({"kafka": {"sasl_mechanism": "PLAIN", "sasl_plain_password": "hunter2"}})
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in settings.model_dump_json()
