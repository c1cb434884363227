"""Process-wide configuration: ``kafka``, ``channels``, ``router``, ``http``.

Validation happens here, before any I/O. Channel entries are parsed in two steps: this module
checks what every channel shares (``name``, ``type``, ``listen``) and keeps the rest; the
connector registry then validates each entry against its type's own model, so plugins can add
channel types. Every error names the path of the bad key, e.g. ``channels[1].listen``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    ValidationError,
    model_validator,
)

__all__ = [
    "DEFAULT_DEPARTMENTS",
    "ChannelConfig",
    "ConfigError",
    "HostPort",
    "HttpConfig",
    "KafkaConfig",
    "ListenAddress",
    "RouterConfig",
    "RuleConfig",
    "RuleMatch",
    "Settings",
    "error_lines",
    "interpolate_env",
]

DEFAULT_DEPARTMENTS = (
    "orders",
    "shipping",
    "billing",
    "returns",
    "sales",
    "support",
    "feedback",
    "complaints",
    "general",
)


class ConfigError(ValueError):
    """A configuration problem; each line names the path of a bad key."""

    def __init__(self, lines: Sequence[str]) -> None:
        self.lines = tuple(lines)
        super().__init__("; ".join(self.lines))


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _parse_host_port(value: object) -> object:
    if not isinstance(value, str):
        return value
    match = re.fullmatch(r"\[(?P<v6>[^\]]+)\]:(?P<p6>\d+)|(?P<host>[^:\s]+):(?P<port>\d+)", value.strip())
    if match is None:
        raise ValueError(f"expected host:port, got {value!r}")
    host = match["v6"] or match["host"]
    port = int(match["p6"] or match["port"])
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    return HostPort(host, port)


ListenAddress = Annotated[HostPort, BeforeValidator(_parse_host_port), PlainSerializer(str, return_type=str)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaConfig(_Section):
    """How to reach the broker. ``bootstrap`` absent means: start the embedded development broker."""

    bootstrap: str | None = Field(
        default=None, description="host:port[,host:port…]; absent: the embedded broker (switchboard up only)"
    )
    topic_prefix: str = Field(
        default="sb", pattern=r"^[A-Za-z0-9._-]{1,100}$", description="first part of every topic name"
    )
    partitions: int = Field(
        default=6, ge=1, le=10_000, description="partitions of topics Switchboard creates"
    )
    replication_factor: int = Field(
        default=1, ge=1, le=32, description="replicas of topics Switchboard creates"
    )
    delivery: Literal["auto", "exactly_once", "at_least_once"] = Field(
        default="auto",
        description="auto: exactly once when the broker has transactions with group fencing (KIP-447, Kafka 2.5+), else at least once",
    )
    client_id: str = Field(default="switchboard", description="Kafka client id prefix (broker logs, quotas)")
    request_timeout_ms: int = Field(default=30_000, ge=1_000, description="Kafka request timeout")
    publish_timeout_s: float = Field(
        default=10.0, gt=0, description="a connector gives up waiting for the broker after this"
    )
    max_record_bytes: int = Field(
        default=900_000, ge=10_000, description="records are cut below this (broker limit ~1 MB)"
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="as aiokafka names it"
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="with SASL_PLAINTEXT or SASL_SSL"
    )
    sasl_plain_username: str | None = Field(default=None, description="SASL user name")
    sasl_plain_password: SecretStr | None = Field(default=None, description="SASL password (use ${VAR})")
    ssl_cafile: str | None = Field(
        default=None, description="CA bundle that signed the brokers' certificates"
    )
    ssl_certfile: str | None = Field(default=None, description="client certificate (mutual TLS)")
    ssl_keyfile: str | None = Field(default=None, description="client key (mutual TLS)")
    ssl_password: SecretStr | None = Field(default=None, description="password of the client key")


class ChannelConfig(BaseModel):
    """What every channel shares. Each channel type extends this beside its connector."""

    model_config = ConfigDict(frozen=True, extra="allow")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$", description="unique instance name")
    type: str = Field(min_length=1, description="channel type, e.g. smtp, imap, slack")
    listen: ListenAddress | None = Field(
        default=None, description="own listen address; HTTP channels default to http.listen"
    )


def _as_tuple(value: Any) -> Any:
    """A single string where a list is expected means a list of one."""
    return (value,) if isinstance(value, str) else value


Strings = Annotated[tuple[str, ...], BeforeValidator(_as_tuple)]


def _valid_pattern(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"not a valid regular expression: {error}") from error
    return value


Pattern = Annotated[str | None, BeforeValidator(_valid_pattern)]


class RuleMatch(_Section):
    """What a rule matches. Every condition given must hold; each list matches any of its items.

    Addresses, domains, channels and languages compare case-insensitively; ``subject`` and
    ``text`` are regular expressions searched case-insensitively; ``keywords`` are words or
    phrases found anywhere in the subject or text, case-insensitively.
    """

    channel: Strings = Field(default=(), description="channel kinds: email, slack, telegram, …")
    instance: Strings = Field(default=(), description="channel instance names from channels[].name")
    sender: Strings = Field(default=(), description="sender ids (addresses, phone numbers, user ids)")
    sender_domain: Strings = Field(default=(), description="domains of sender addresses")
    recipient: Strings = Field(default=(), description="any recipient address")
    recipient_domain: Strings = Field(default=(), description="domain of any recipient address")
    subject: Pattern = Field(default=None, description="regular expression searched in the subject")
    text: Pattern = Field(default=None, description="regular expression searched in the text")
    language: Strings = Field(default=(), description="ISO 639-1 codes of the identified language")
    keywords: Strings = Field(default=(), description="words or phrases anywhere in subject or text")


class RuleConfig(_Section):
    """One admin rule: when ``match`` holds, apply the actions. Rules run in order, before the model.

    ``department``: route there (the first matching rule with a department decides it);
    ``priority`` / ``escalate``: set them (later matching rules may raise them further);
    ``stop``: evaluate no further rules.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$", description="shown in reasons as rule:<name>")
    match: RuleMatch = Field(default=RuleMatch(), description="conditions; all must hold (none: always)")
    department: str | None = Field(default=None, description="route here (the first such rule wins)")
    priority: Literal["low", "normal", "high", "urgent"] | None = Field(
        default=None, description="raise the priority to at least this"
    )
    escalate: bool | None = Field(default=None, description="force escalation on (or off)")
    stop: bool = Field(default=False, description="evaluate no further rules")

    @model_validator(mode="after")
    def _does_something(self) -> RuleConfig:
        if self.department is None and self.priority is None and self.escalate is None and not self.stop:
            raise ValueError("a rule needs at least one of department, priority, escalate, stop")
        return self


class RouterConfig(_Section):
    """How the router decides: departments, model, threshold, admin rules."""

    model: str | None = Field(default=None, description="path of a trained model; null = packaged")
    departments: tuple[str, ...] = Field(default=DEFAULT_DEPARTMENTS, description="one queue topic each")
    min_confidence: float = Field(
        default=0.5, ge=0.0, le=1.0, description="below it a message goes to triage"
    )
    rules: tuple[RuleConfig, ...] = Field(default=(), description="admin rules, before the model, in order")
    auto_replies: Literal["route", "drop"] = Field(
        default="route", description="auto-replies and bounces: to general at low priority, or dropped"
    )
    affinity_switch_confidence: float = Field(
        default=0.85,
        ge=0.0,
        le=1.0,
        description="confidence a follow-up needs to leave its conversation's department",
    )

    @model_validator(mode="after")
    def _departments_are_topic_safe(self) -> RouterConfig:
        for department in self.departments:
            if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", department):
                raise ValueError(f"department {department!r} must be lowercase letters, digits, - or _")
        if len(set(self.departments)) != len(self.departments):
            raise ValueError("departments must be unique")
        names: set[str] = set()
        for index, rule in enumerate(self.rules):
            if rule.department is not None and rule.department not in self.departments:
                raise ValueError(
                    f"rules[{index}].department: {rule.department!r} is not a configured department"
                )
            if rule.name in names:
                raise ValueError(f"rules[{index}].name: {rule.name!r} is used by another rule")
            names.add(rule.name)
        return self


class HttpConfig(_Section):
    """The process's HTTP server."""

    listen: ListenAddress = Field(
        default=HostPort("127.0.0.1", 8080), description="/healthz, /readyz, /metrics and /channels/<name>"
    )


class Settings(_Section):
    kafka: KafkaConfig = KafkaConfig()
    channels: tuple[ChannelConfig, ...] = ()
    router: RouterConfig = RouterConfig()
    http: HttpConfig = HttpConfig()

    @model_validator(mode="after")
    def _channel_names_are_unique(self) -> Settings:
        seen: dict[str, int] = {}
        for index, channel in enumerate(self.channels):
            if channel.name in seen:
                first = seen[channel.name]
                raise ValueError(
                    f"channels[{index}].name: {channel.name!r} is already used by channels[{first}]"
                )
            seen[channel.name] = index
        return self

    def channel(self, name: str) -> ChannelConfig:
        for channel in self.channels:
            if channel.name == name:
                return channel
        known = ", ".join(c.name for c in self.channels) or "none"
        raise ConfigError([f"channels: no channel named {name!r} (configured: {known})"])


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def interpolate_env(tree: Any, env: Mapping[str, str], path: str = "") -> Any:
    """Replace every ``${VAR}`` in the strings of *tree* with ``env[VAR]``.

    An unset variable is an error naming the key that used it. ``$${VAR}`` is not special:
    configuration values that need a literal ``${`` are rare enough not to warrant escaping.
    """
    if isinstance(tree, str):
        missing = [name for name in _VARIABLE.findall(tree) if name not in env]
        if missing:
            raise ConfigError([f"{path or '<root>'}: environment variable {missing[0]} is not set"])
        return _VARIABLE.sub(lambda m: env[m.group(1)], tree)
    if isinstance(tree, Mapping):
        return {k: interpolate_env(v, env, f"{path}.{k}" if path else str(k)) for k, v in tree.items()}
    if isinstance(tree, list):
        return [interpolate_env(v, env, f"{path}[{i}]") for i, v in enumerate(tree)]
    return tree


_PATHED = re.compile(r"^[A-Za-z_][\w.\[\]-]*: ")


def _location(loc: Sequence[int | str], prefix: str) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path or "<root>"


def error_lines(error: ValidationError, prefix: str = "") -> list[str]:
    """One ``path: message`` line per problem in a pydantic validation error."""
    lines = []
    for problem in error.errors(include_url=False):
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown key"
        if not problem["loc"] and _PATHED.match(message):
            lines.append(message)  # a model-level check that already names its key
        else:
            lines.append(f"{_location(problem['loc'], prefix)}: {message}")
    return lines
