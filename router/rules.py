"""Admin rules: explainable routing decisions taken before the model, in the order written.

A rule set is compiled once from :class:`models.config.RuleConfig` entries (patterns compiled,
lists lower-cased) and then applied per message. :class:`RuleBook` holds the current set and
swaps in a new one when its source changes (the config file edited by an admin), without a
restart; a source that turns invalid keeps the last good rules and reports the error.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from models import InboundMessage
from models.config import RuleConfig
from models.messages import Priority

if TYPE_CHECKING:  # structlog's import pulls in rich: a third of classify's start-up
    from structlog.typing import FilteringBoundLogger

__all__ = ["RuleBook", "RuleOutcome", "RuleSet", "RuleSource", "StaticRules"]

PRIORITY_ORDER: tuple[Priority, ...] = ("low", "normal", "high", "urgent")


@dataclass(frozen=True, slots=True)
class RuleOutcome:
    """What the matching rules decided; ``None`` fields were left to the later steps."""

    department: str | None = None
    priority: Priority | None = None
    escalate: bool | None = None
    reasons: tuple[str, ...] = ()


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


@dataclass(frozen=True, slots=True)
class _CompiledRule:
    config: RuleConfig
    channels: frozenset[str]
    instances: frozenset[str]
    senders: frozenset[str]
    sender_domains: frozenset[str]
    recipients: frozenset[str]
    recipient_domains: frozenset[str]
    languages: frozenset[str]
    subject: re.Pattern[str] | None
    text: re.Pattern[str] | None
    keywords: re.Pattern[str] | None

    @classmethod
    def compile(cls, config: RuleConfig) -> _CompiledRule:
        match = config.match

        def lowered(values: Iterable[str]) -> frozenset[str]:
            return frozenset(v.lower() for v in values)

        keywords = None
        if match.keywords:
            alternatives = "|".join(re.escape(k) for k in sorted(match.keywords, key=len, reverse=True))
            keywords = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)
        return cls(
            config=config,
            channels=lowered(match.channel),
            instances=lowered(match.instance),
            senders=lowered(match.sender),
            sender_domains=lowered(d.lstrip("@") for d in match.sender_domain),
            recipients=lowered(match.recipient),
            recipient_domains=lowered(d.lstrip("@") for d in match.recipient_domain),
            languages=lowered(match.language),
            subject=re.compile(match.subject, re.IGNORECASE) if match.subject else None,
            text=re.compile(match.text, re.IGNORECASE) if match.text else None,
            keywords=keywords,
        )

    def matches(self, message: InboundMessage, language: str) -> bool:
        """True when every condition the rule states holds for the message."""
        sender = message.sender.id.lower()
        recipients = [r.lower() for r in message.recipients]
        subject = message.subject or ""
        return (
            (not self.channels or message.channel.lower() in self.channels)
            and (not self.instances or message.channel_instance.lower() in self.instances)
            and (not self.senders or sender in self.senders)
            and (not self.sender_domains or _domain_of(sender) in self.sender_domains)
            and (not self.recipients or any(r in self.recipients for r in recipients))
            and (
                not self.recipient_domains or any(_domain_of(r) in self.recipient_domains for r in recipients)
            )
            and (not self.languages or language.lower() in self.languages)
            and (self.subject is None or self.subject.search(subject) is not None)
            and (self.text is None or self.text.search(message.text) is not None)
            and (
                self.keywords is None
                or self.keywords.search(subject) is not None
                or self.keywords.search(message.text) is not None
            )
        )


_NOTHING_DECIDED = RuleOutcome()


def _higher(current: Priority | None, new: Priority) -> Priority:
    if current is None or PRIORITY_ORDER.index(new) > PRIORITY_ORDER.index(current):
        return new
    return current


@dataclass(frozen=True)
class RuleSet:
    """Compiled rules, applied in order."""

    rules: tuple[_CompiledRule, ...] = ()

    @classmethod
    def compile(cls, configs: Sequence[RuleConfig]) -> RuleSet:
        return cls(tuple(_CompiledRule.compile(c) for c in configs))

    def __len__(self) -> int:
        return len(self.rules)

    def apply(self, message: InboundMessage, language: str) -> RuleOutcome:
        """The combined outcome of the matching rules, with one ``rule:<name>`` reason per rule.

        The first matching rule that names a department decides it; priorities only ever rise;
        an ``escalate`` set by a rule stands; ``stop`` ends the evaluation.
        """
        if not self.rules:
            return _NOTHING_DECIDED
        department: str | None = None
        priority: Priority | None = None
        escalate: bool | None = None
        reasons: list[str] = []
        for rule in self.rules:
            if not rule.matches(message, language):
                continue
            config = rule.config
            reasons.append(f"rule:{config.name}")
            if department is None and config.department is not None:
                department = config.department
            if config.priority is not None:
                priority = _higher(priority, config.priority)
            if config.escalate is not None:
                escalate = config.escalate if escalate is None else escalate or config.escalate
            if config.stop:
                break
        return RuleOutcome(department, priority, escalate, tuple(reasons))


class RuleSource(Protocol):
    """Where rules come from. ``version()`` is cheap and changes when ``load()`` would differ."""

    def version(self) -> object: ...

    def load(self) -> Sequence[RuleConfig]: ...


@dataclass(frozen=True)
class StaticRules:
    """Rules fixed at start-up (no file to watch, e.g. the demo configuration)."""

    rules: tuple[RuleConfig, ...]

    def version(self) -> object:
        return 0

    def load(self) -> Sequence[RuleConfig]:
        return self.rules


@dataclass
class RuleBook:
    """The rules in force, re-read from their source when it changes (checked every ``interval`` s)."""

    source: RuleSource
    logger: FilteringBoundLogger | None = None
    interval: float = 2.0
    monotonic: Callable[[], float] = time.monotonic
    _rules: RuleSet = field(init=False)
    _version: object = field(init=False)
    _checked_at: float = field(init=False)

    def __post_init__(self) -> None:
        self._version = self.source.version()
        self._rules = RuleSet.compile(self.source.load())
        self._checked_at = self.monotonic()

    def current(self) -> RuleSet:
        """The rules to apply now; reloads first if the source changed since the last check."""
        now = self.monotonic()
        if now - self._checked_at >= self.interval:
            self._checked_at = now
            self._reload_if_changed()
        return self._rules

    def _log(self) -> FilteringBoundLogger:
        if self.logger is None:
            import structlog  # on first use only: a one-off classify never reloads, never logs

            self.logger = structlog.get_logger("router.rules")
        return self.logger

    def _reload_if_changed(self) -> None:
        try:
            version = self.source.version()
        except OSError as error:
            self._log().error("routing rules source unreadable; keeping the previous rules", error=str(error))
            return
        if version == self._version:
            return
        self._version = version  # a broken edit is reported once, not at every check
        try:
            rules = RuleSet.compile(self.source.load())
        except Exception as error:  # any reason the new rules cannot be used: keep the last good ones
            self._log().error("routing rules not reloaded; keeping the previous rules", error=str(error))
            return
        self._rules = rules
        self._log().info("routing rules reloaded", rules=len(rules))
