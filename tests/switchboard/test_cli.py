"""The command line as users meet it: help everywhere, one clear line for a mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from models.config import KafkaConfig

COMMANDS = [
    ["up"],
    ["demo"],
    ["connector", "run"],
    ["router", "run"],
    ["topics", "init"],
    ["tail"],
    ["classify"],
    ["train"],
    ["eval"],
    ["channels", "list"],
    ["channels", "check"],
    ["quarantine", "list"],
    ["quarantine", "reprocess"],
]


def switchboard(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "switchboard.cli", *args], capture_output=True, text=True, timeout=60, cwd=cwd
    )


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_contract_command_has_help_with_a_config_option(command: list[str]) -> None:
    result = switchboard(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout


def test_a_bad_config_file_is_one_line_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "switchboard.yaml"
    config.write_text("kafka:\n  bootstrap: 127.0.0.1:9092\n  partitons: 3\n")
    result = switchboard("channels", "list", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr == "switchboard: invalid configuration: kafka.partitons: unknown key\n"


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    config = tmp_path / "switchboard.yaml"
    config.write_text("kafka:\n  bootstrap: [unclosed\n")
    result = switchboard("channels", "list", "-c", str(config))
    assert result.returncode == 2
    assert "not valid YAML" in result.stderr and "line" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_is_found_in_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "switchboard.yaml").write_text("kafka:\n  bootstrap: [not, a, string]\n")
    result = switchboard("channels", "list", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("switchboard: invalid configuration: kafka.bootstrap:")


def test_topics_init_twice_is_a_no_op(kafka_config: KafkaConfig, tmp_path: Path) -> None:
    config = tmp_path / "switchboard.yaml"
    config.write_text(
        f"kafka:\n  bootstrap: {kafka_config.bootstrap}\n  topic_prefix: {kafka_config.topic_prefix}\n  partitions: 2\n"
    )
    first = switchboard("topics", "init", "-c", str(config))
    assert first.returncode == 0, first.stderr
    assert "16 created, 0 already present" in first.stdout
    assert f"created {kafka_config.topic_prefix}.dept.billing" in first.stdout
    second = switchboard("topics", "init", "-c", str(config))
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "0 created, 16 already present"
