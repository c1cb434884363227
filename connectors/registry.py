"""Channel types: one table from ``type`` to (config model, factory, summary).

Built-in types are listed explicitly below and imported only when used, so a command that
runs no channel (``classify``) pays nothing for them. Plugins add types through the
``switchboard.channels`` entry-point group; an entry point names a :class:`ChannelType`.
"""

from __future__ import annotations

import builtins
import importlib
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from pydantic import ValidationError

from connectors.base import Connector, ConnectorContext
from models import InboundMessage
from models.config import ChannelConfig, ConfigError, error_lines

__all__ = ["BUILTIN_TYPES", "ChannelType", "Registry"]

Factory = Callable[[Any, ConnectorContext], Connector]
Check = Callable[[Any], Coroutine[Any, Any, str]]
"""``channels check``: tests credentials and connectivity; returns a one-line summary, raises on failure."""
Reprocess = Callable[[Any, bytes], InboundMessage]
"""Turns quarantined raw input of this channel type back into a record (``quarantine reprocess``)."""


@dataclass(frozen=True, slots=True)
class ChannelType:
    """Everything the host needs to know about one channel type."""

    type: str
    channel: str  # the ``channel`` field of its records: email, slack, …
    config_model: builtins.type[ChannelConfig]
    factory: Factory
    summary: str
    http: bool = False  # served by the process's HTTP server at /channels/<name>
    check: Check | None = None
    reprocess: Reprocess | None = None


# type -> "module:attribute" of its ChannelType. Order is the order `channels list` documents.
BUILTIN_TYPES: Mapping[str, str] = {
    "smtp": "connectors.smtp:CHANNEL_TYPE",
    "imap": "connectors.imap:CHANNEL_TYPE",
    "slack": "connectors.slack:CHANNEL_TYPE",
    "telegram": "connectors.telegram:CHANNEL_TYPE",
    "whatsapp": "connectors.whatsapp:CHANNEL_TYPE",
    "sms": "connectors.sms:CHANNEL_TYPE",
    "webhook": "connectors.webhook:CHANNEL_TYPE",
    "webchat": "connectors.webchat:CHANNEL_TYPE",
}

ENTRY_POINT_GROUP = "switchboard.channels"


def _load(target: str) -> ChannelType:
    module_name, _, attribute = target.partition(":")
    loaded = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(loaded, ChannelType):
        raise TypeError(f"{target} is not a ChannelType")
    return loaded


class Registry:
    """Maps channel ``type`` names to their :class:`ChannelType`, loading each on first use."""

    def __init__(self, targets: Mapping[str, str], loaded: Iterable[ChannelType] = ()) -> None:
        self._targets = dict(targets)
        self._loaded = {t.type: t for t in loaded}

    @classmethod
    def default(cls) -> Registry:
        """The built-in types plus every installed plugin."""
        targets = dict(BUILTIN_TYPES)
        for point in entry_points(group=ENTRY_POINT_GROUP):
            targets.setdefault(point.name, point.value)
        return cls(targets)

    @property
    def types(self) -> list[str]:
        return sorted(set(self._targets) | set(self._loaded), key=self._order)

    def _order(self, name: str) -> tuple[int, str]:
        builtin = list(BUILTIN_TYPES)
        return (builtin.index(name) if name in builtin else len(builtin), name)

    def get(self, type_name: str) -> ChannelType:
        if type_name not in self._loaded:
            target = self._targets.get(type_name)
            if target is None:
                raise KeyError(type_name)
            self._loaded[type_name] = _load(target)
        return self._loaded[type_name]

    def available(self, type_name: str) -> bool:
        """Whether *type_name* is known and its module imports."""
        try:
            self.get(type_name)
        except (KeyError, ImportError):
            return False
        return True

    def validate(self, channel: ChannelConfig, index: int) -> ChannelConfig:
        """Validate one ``channels[index]`` entry against its type's own model."""
        path = f"channels[{index}]"
        try:
            channel_type = self.get(channel.type)
        except KeyError:
            known = ", ".join(self.types)
            raise ConfigError(
                [f"{path}.type: unknown channel type {channel.type!r} (known: {known})"]
            ) from None
        except ImportError as error:
            raise ConfigError(
                [f"{path}.type: the {channel.type} channel cannot be loaded: {error}"]
            ) from None
        try:
            return channel_type.config_model.model_validate(channel.model_dump())
        except ValidationError as error:
            raise ConfigError(error_lines(error, prefix=path)) from None

    def build(self, config: ChannelConfig, context: ConnectorContext) -> Connector:
        return self.get(config.type).factory(config, context)
