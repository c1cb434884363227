"""Loading the configuration file: the only place that reads files and the environment for it."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from connectors.registry import Registry
from models.config import ConfigError, RuleConfig, Settings, error_lines, interpolate_env

__all__ = ["DEMO_CONFIG", "ConfigFileRules", "find_config", "load_settings", "settings_from_mapping"]

DEMO_CONFIG: dict[str, Any] = {
    "channels": [
        {"name": "support-mail", "type": "smtp", "listen": "127.0.0.1:2525", "domains": ["example.com"]},
        {
            "name": "website-chat",
            "type": "webchat",
            "allowed_origins": ["http://127.0.0.1:8080", "http://localhost:8080"],
        },
    ],
    "http": {"listen": "127.0.0.1:8080"},
}


def find_config(explicit: Path | None, env: Mapping[str, str]) -> Path | None:
    """``--config``, else ``$SWITCHBOARD_CONFIG``, else ``./switchboard.yaml`` if present."""
    if explicit is not None:
        return explicit
    if env.get("SWITCHBOARD_CONFIG"):
        return Path(env["SWITCHBOARD_CONFIG"])
    default = Path("switchboard.yaml")
    return default if default.is_file() else None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError([f"{path}: cannot read: {error.strerror or error}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError([f"{path}:{where} not valid YAML: {getattr(error, 'problem', error)}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of sections (kafka, channels, …)"])
    return data


def _apply_overrides(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    kafka = dict(data.get("kafka") or {})
    if env.get("SWITCHBOARD_KAFKA_BOOTSTRAP"):
        kafka["bootstrap"] = env["SWITCHBOARD_KAFKA_BOOTSTRAP"]
    if env.get("SWITCHBOARD_TOPIC_PREFIX"):
        kafka["topic_prefix"] = env["SWITCHBOARD_TOPIC_PREFIX"]
    return {**data, "kafka": kafka} if kafka else data


def settings_from_mapping(data: Mapping[str, Any], env: Mapping[str, str], registry: Registry) -> Settings:
    """Validate a configuration tree: shared sections first, then each channel by its type."""
    tree = _apply_overrides(interpolate_env(dict(data), env), env)
    try:
        settings = Settings.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(error_lines(error)) from None
    channels = tuple(registry.validate(channel, index) for index, channel in enumerate(settings.channels))
    return settings.model_copy(update={"channels": channels})


def load_settings(
    path: Path | None,
    registry: Registry,
    env: Mapping[str, str] | None = None,
    *,
    demo_fallback: bool = False,
) -> tuple[Settings, Path | None]:
    """The validated settings and the file they came from (None: built-in defaults or demo)."""
    env = os.environ if env is None else env
    found = find_config(path, env)
    if found is None and demo_fallback:
        channels = [c for c in DEMO_CONFIG["channels"] if registry.available(c["type"])]
        data: dict[str, Any] = {**DEMO_CONFIG, "channels": channels}
    elif found is None:
        data = {}
    else:
        data = _read_yaml(found)
    return settings_from_mapping(data, env, registry), found


class ConfigFileRules:
    """The routing rules of a config file, re-read when the file changes (no restart needed).

    ``version()`` is the file's modification time and size, cheap enough to poll every few
    seconds; ``load()`` validates the whole file as at start-up, so a broken edit is refused
    with the same messages and the router keeps its previous rules.
    """

    def __init__(
        self, path: Path, registry: Registry | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        self.path = path
        self._registry = registry or Registry.default()
        self._env = env

    def version(self) -> object:
        stat = self.path.stat()
        return (stat.st_mtime_ns, stat.st_size)

    def load(self) -> Sequence[RuleConfig]:
        settings, _ = load_settings(self.path, self._registry, self._env)
        return settings.router.rules
