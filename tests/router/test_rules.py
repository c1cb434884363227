"""Admin rules: matching, precedence, and reloading when the config file changes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog
import yaml

from connectors.registry import Registry
from models import InboundMessage, Sender
from models.config import RouterConfig, RuleConfig
from router.rules import RuleBook, RuleSet, StaticRules
from switchboard.settings import ConfigFileRules


def _message(
    text: str = "hello", *, sender: str = "kumar@example.org", channel: str = "email"
) -> InboundMessage:
    return InboundMessage(
        message_id="m1",
        channel=channel,
        channel_instance="support-mail",
        native_id="n1",
        received_at=datetime.now(UTC),
        sender=Sender(id=sender),
        recipients=("help@example.com",),
        conversation_id="c1",
        subject="Invoice 42",
        text=text,
        body=text,
    )


def _rules(*rules: dict[str, object]) -> RuleSet:
    return RuleSet.compile([RuleConfig.model_validate(r) for r in rules])


def test_the_first_matching_rule_with_a_department_decides_it() -> None:
    rules = _rules(
        {"name": "vip", "match": {"sender_domain": "example.org"}, "department": "sales", "priority": "high"},
        {"name": "invoices", "match": {"subject": "invoice"}, "department": "billing"},
    )
    outcome = rules.apply(_message(), "en")
    assert outcome.department == "sales"
    assert outcome.priority == "high"
    assert outcome.reasons == ("rule:vip", "rule:invoices")


def test_stop_ends_the_evaluation() -> None:
    rules = _rules(
        {"name": "mute", "match": {"channel": "email"}, "stop": True},
        {"name": "never", "match": {}, "department": "billing"},
    )
    outcome = rules.apply(_message(), "en")
    assert outcome.department is None
    assert outcome.reasons == ("rule:mute",)


def test_every_condition_must_hold() -> None:
    rules = _rules({"name": "ta-mail", "match": {"channel": "email", "language": ["ta"]}, "escalate": True})
    assert rules.apply(_message(), "en").escalate is None
    assert rules.apply(_message(), "ta").escalate is True
    assert rules.apply(_message(channel="slack"), "ta").escalate is None


def test_keywords_match_whole_words_in_subject_or_text() -> None:
    rules = _rules({"name": "legal", "match": {"keywords": ["lawyer", "court"]}, "priority": "urgent"})
    assert rules.apply(_message("my LAWYER will call"), "en").priority == "urgent"
    assert rules.apply(_message("the courtyard is nice"), "en").priority is None


def test_priorities_only_rise() -> None:
    rules = _rules(
        {"name": "a", "match": {}, "priority": "urgent"},
        {"name": "b", "match": {}, "priority": "low"},
    )
    assert rules.apply(_message(), "en").priority == "urgent"


def test_a_rule_naming_an_unknown_department_is_a_config_error() -> None:
    with pytest.raises(ValueError, match=r"rules\[0\]\.department"):
        RouterConfig.model_validate({"rules": [{"name": "x", "department": "nowhere"}]})


def test_a_rule_that_does_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one of"):
        RuleConfig.model_validate({"name": "idle", "match": {"channel": "email"}})


def _write_config(path: Path, department: str) -> None:
    config = {
        "kafka": {"bootstrap": "127.0.0.1:9092"},
        "router": {"rules": [{"name": "route-all", "match": {}, "department": department}]},
    }
    path.write_text(yaml.safe_dump(config))


def test_rules_reload_when_the_config_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "switchboard.yaml"
    _write_config(path, "billing")
    now = [0.0]
    book = RuleBook(
        ConfigFileRules(path, Registry.default(), {}), structlog.get_logger(), monotonic=lambda: now[0]
    )
    assert book.current().apply(_message(), "en").department == "billing"

    _write_config(path, "shipping-and-more")  # an invalid edit: unknown department
    now[0] += 5
    assert book.current().apply(_message(), "en").department == "billing"  # the last good rules stay

    _write_config(path, "shipping")
    now[0] += 5
    assert book.current().apply(_message(), "en").department == "shipping"


def test_static_rules_never_change() -> None:
    rule = RuleConfig(name="x", department="billing")
    book = RuleBook(StaticRules((rule,)), structlog.get_logger(), interval=0)
    assert book.current().apply(_message(), "en").department == "billing"
