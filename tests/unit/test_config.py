"""Layered configuration and the errors a person sees when it is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from voiceagent.config import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    Settings,
    load_settings,
    settings_as_yaml,
)

REPO = DEFAULT_CONFIG_PATH.parent.parent


def write(tmp_path: Path, text: str, name: str = "local.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_default_yaml_documents_exactly_the_model_defaults() -> None:
    # default.yaml is the reference users read: it must not drift from the code.
    from_file = load_settings(environ={})
    assert from_file.model_dump(exclude={"node_id"}) == Settings().model_dump(exclude={"node_id"})


def test_layers_apply_in_order_file_then_environment(tmp_path: Path) -> None:
    local = write(tmp_path, "server:\n  port: 9000\n  log_level: debug\nnode_id: from-file\n")
    settings = load_settings(local, environ={"VOICEAGENT_SERVER__PORT": "9100"})
    assert settings.server.port == 9100  # environment wins
    assert settings.server.log_level == "debug"  # file beats defaults
    assert settings.server.host == "127.0.0.1"  # untouched default survives
    assert settings.node_id == "from-file"


def test_config_file_can_be_named_by_environment(tmp_path: Path) -> None:
    local = write(tmp_path, "events:\n  backend: rocketmq\n")
    settings = load_settings(environ={"VOICEAGENT_CONFIG": str(local)})
    assert settings.events.backend == "rocketmq"
    assert settings.events.rocketmq.endpoints == "127.0.0.1:8081"


def test_environment_values_are_typed_and_json_for_structures() -> None:
    settings = load_settings(
        environ={
            "VOICEAGENT_STORE__MIGRATE_ON_START": "false",
            "VOICEAGENT_LLM__REQUEST_TIMEOUT_S": "2.5",
            "VOICEAGENT_EVENTS__ROCKETMQ": '{"endpoints": "mq:8081"}',
        }
    )
    assert settings.store.migrate_on_start is False
    assert settings.llm.request_timeout_s == 2.5
    assert settings.events.rocketmq.endpoints == "mq:8081"


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    local = write(tmp_path, "server:\n  prot: 9000\n")
    with pytest.raises(ConfigError) as err:
        load_settings(local, environ={})
    assert str(err.value) == f"invalid configuration: {local}: server.prot: unknown key"


def test_wrong_type_names_key_file_and_value(tmp_path: Path) -> None:
    local = write(tmp_path, "server:\n  port: eighty\n")
    with pytest.raises(ConfigError) as err:
        load_settings(local, environ={})
    message = str(err.value)
    assert message.startswith(f"invalid configuration: {local}: server.port: ")
    assert "'eighty'" in message and "\n" not in message


def test_bad_environment_value_names_the_environment() -> None:
    with pytest.raises(ConfigError, match=r"environment: server\.port: .*'-5'"):
        load_settings(environ={"VOICEAGENT_SERVER__PORT": "-5"})
    with pytest.raises(ConfigError, match=r"environment: wat: unknown key"):
        load_settings(environ={"VOICEAGENT_WAT": "1"})


def test_unsupported_database_driver_is_explained(tmp_path: Path) -> None:
    local = write(tmp_path, "store:\n  url: mysql://x@y/z\n")
    with pytest.raises(ConfigError, match=r"store\.url: .*postgresql\+asyncpg"):
        load_settings(local, environ={})


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    local = write(tmp_path, "server:\n  port: x\n  color: red\n")
    with pytest.raises(ConfigError) as err:
        load_settings(local, environ={})
    assert "server.port" in str(err.value) and "server.color: unknown key" in str(err.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("server: [unclosed\n", r"line 1?\d*: not valid YAML"),
        ("- just\n- a list\n", "top level must be a mapping"),
    ],
)
def test_unreadable_yaml_is_reported_with_its_file(tmp_path: Path, text: str, expected: str) -> None:
    local = write(tmp_path, text)
    with pytest.raises(ConfigError, match=expected) as err:
        load_settings(local, environ={})
    assert str(local) in str(err.value)


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match=r"config file not found: /nope\.yaml"):
        load_settings("/nope.yaml", environ={})


def test_empty_yaml_means_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, ""), environ={}).server.port == 8000


def test_multinode_example_is_valid_and_uses_external_services() -> None:
    settings = load_settings(REPO / "configs" / "multinode.example.yaml", environ={})
    assert settings.store.url.startswith("postgresql+asyncpg://")
    assert settings.events.backend == "rocketmq"
    assert settings.llm.base_url is not None


def test_printed_settings_hide_secrets(tmp_path: Path) -> None:
    local = write(
        tmp_path,
        "store:\n  url: postgresql+asyncpg://va:hunter2@db:5432/va\n"
        "llm:\n  api_key: sk-secret\nevents:\n  rocketmq:\n    secret_key: mq-secret\n",
    )
    text = settings_as_yaml(load_settings(local, environ={}))
    assert "hunter2" not in text and "sk-secret" not in text and "mq-secret" not in text
    assert "postgresql+asyncpg://va:***@db:5432/va" in text
