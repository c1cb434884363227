"""The configuration reference is generated from the models, complete, and never shows a secret."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from connectors.registry import BUILTIN_TYPES, ChannelType, Registry
from models.config import ChannelConfig, RouterConfig, RuleConfig, RuleMatch, Settings
from switchboard.docgen import HIDDEN, main, render_reference

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "configuration.md"
PLUGIN_SECRET = "plugin-default-secret-0451"
PLUGIN_USER_SECRET = "plugin-user-password-9931"


class EchoLimits(BaseModel):
    """Limits of the echo gateway."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    per_minute: int = Field(default=60, ge=1, le=600)
    """Messages the gateway may post per minute."""


class EchoConfig(ChannelConfig):
    """``type: echo``: a plugin channel that only exists in this test."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["echo"] = "echo"
    token: SecretStr = SecretStr(PLUGIN_SECRET)
    """The token the gateway signs with."""
    users: dict[str, SecretStr] = Field(default_factory=lambda: {"ops": SecretStr(PLUGIN_USER_SECRET)})
    spare_token: SecretStr | None = None
    limits: EchoLimits = EchoLimits()


def _never_built(config: Any, context: Any) -> Any:
    raise AssertionError("documentation never builds a connector")


ECHO = ChannelType(
    type="echo", channel="echo", config_model=EchoConfig, factory=_never_built, summary="Echo for tests"
)


def tables(markdown: str) -> dict[str, dict[str, list[str]]]:
    """``{heading: {key: [type, default, description]}}`` for every table of the reference."""
    found: dict[str, dict[str, list[str]]] = {}
    heading = ""
    for line in markdown.splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif line.startswith("| ") and not line.startswith("| key |"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            found.setdefault(heading, {})[cells[0].strip("`")] = cells[1:]
    return found


def secret_keys(model: type[BaseModel]) -> list[str]:
    return [name for name, info in model.model_fields.items() if "SecretStr" in repr(info.annotation)]


def test_the_committed_reference_is_current() -> None:
    rendered = render_reference(Registry(BUILTIN_TYPES))
    committed = COMMITTED.read_text(encoding="utf-8")
    assert committed == rendered, (
        "docs/configuration.md is stale: a config model changed. Regenerate it from the repository root "
        "with `python -m switchboard.docgen > docs/configuration.md` and commit it."
    )


def test_rendering_is_deterministic() -> None:
    assert render_reference(Registry.default()) == render_reference(Registry.default())


def test_every_channel_type_of_the_registry_has_a_complete_section() -> None:
    registry = Registry(BUILTIN_TYPES, loaded=[ECHO])
    sections = tables(render_reference(registry))
    assert "echo" in registry.types
    for type_name in [*Registry.default().types, "echo"]:
        model = registry.get(type_name).config_model
        table = sections.get(f"`type: {type_name}`")
        assert table is not None, f"no section for channel type {type_name}"
        assert list(table) == list(model.model_fields), type_name
        assert table["name"][1] == "`required`" and table["type"][1] == "`required`"


def test_top_level_sections_and_nested_models_have_tables() -> None:
    sections = tables(render_reference(Registry(BUILTIN_TYPES, loaded=[ECHO])))
    for name in Settings.model_fields:
        assert f"`{name}`" in sections, name
    assert list(sections["`router`"]) == list(RouterConfig.model_fields)
    assert list(sections["`router.rules[]`"]) == list(RuleConfig.model_fields)
    assert list(sections["`router.rules[].match`"]) == list(RuleMatch.model_fields)
    assert sections["`channels[].limits`"]["per_minute"] == [
        "`int` (1–600)",
        "`60`",
        "Messages the gateway may post per minute.",
    ]


def test_types_and_defaults_are_readable() -> None:
    sections = tables(render_reference(Registry(BUILTIN_TYPES)))
    smtp = sections["`type: smtp`"]
    assert smtp["listen"][:2] == ["`host:port`", "`127.0.0.1:2525`"]
    assert smtp["domains"][:2] == ["`list[str]`", "`[]`"]
    assert smtp["max_recipients"][:2] == ["`int` (1–10000)", "`100`"]
    assert smtp["auth_users"][:2] == ["`map[str, secret]`", "`{}`"]
    imap = sections["`type: imap`"]
    assert imap["folders"][1] == "`[INBOX]`"
    assert imap["password"][0] == "`secret | null`"
    assert sections["`kafka`"]["delivery"][0] == "`auto | exactly_once | at_least_once`"
    assert sections["`type: webhook`"]["secret"][1] == "`required`"


def test_descriptions_fall_back_to_attribute_docstrings_and_base_classes() -> None:
    echo = tables(render_reference(Registry(BUILTIN_TYPES, loaded=[ECHO])))["`type: echo`"]
    assert echo["token"][2] == "The token the gateway signs with."
    assert echo["type"][2] == ChannelConfig.model_fields["type"].description


def test_no_secret_default_is_ever_shown() -> None:
    registry = Registry(BUILTIN_TYPES, loaded=[ECHO])
    text = render_reference(registry)
    assert PLUGIN_SECRET not in text and PLUGIN_USER_SECRET not in text
    sections = tables(text)
    echo = sections["`type: echo`"]
    assert echo["token"][1] == f"`{HIDDEN}`"
    assert echo["users"][1] == f"`{HIDDEN}`"
    assert echo["spare_token"][1] == "`null`"
    for type_name in registry.types:
        model = registry.get(type_name).config_model
        for key in secret_keys(model):
            assert sections[f"`type: {type_name}`"][key][1] in ("`required`", "`null`", "`{}`", f"`{HIDDEN}`")


def test_check_exits_1_for_a_stale_file_and_0_for_a_current_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_text("# Configuration reference\n", encoding="utf-8")
    assert main(["--check", "--path", str(stale)]) == 1
    assert "python -m switchboard.docgen > docs/configuration.md" in capsys.readouterr().err
    stale.write_text(render_reference(Registry(BUILTIN_TYPES)), encoding="utf-8")
    assert main(["--check", "--path", str(stale)]) == 0
    assert main(["--check", "--path", str(tmp_path / "missing.md")]) == 1
