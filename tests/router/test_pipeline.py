"""The decision pipeline with the packaged models: languages, rules, affinity, escalation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from models import InboundMessage, Sender
from models.config import RouterConfig, RuleConfig
from router.pipeline import ConversationContext, Pipeline, build_decider

NOW = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


def _message(text: str, *, subject: str = "", metadata: dict[str, object] | None = None) -> InboundMessage:
    return InboundMessage(
        message_id="m",
        channel="email",
        channel_instance="support-mail",
        native_id="n",
        received_at=NOW,
        sender=Sender(id="customer@example.org"),
        recipients=("help@example.com",),
        conversation_id="support-mail:c",
        subject=subject or None,
        text=text,
        body=text,
        metadata=metadata or {},
    )


@pytest.fixture(scope="module")
def pipeline() -> Pipeline:
    return build_decider(RouterConfig(), lambda: NOW)


def _decide(pipeline: Pipeline, text: str, context: ConversationContext | None = None, **kwargs: object):  # type: ignore[no-untyped-def]
    return pipeline.decide_batch([_message(text, **kwargs)], [context or ConversationContext()])[0]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "language", "department"),
    [
        ("என் பார்சல் இன்னும் வரவில்லை, டிராக்கிங் நம்பர் வேலை செய்யவில்லை. கூரியர் எங்கே?", "ta", "shipping"),
        ("আমার কার্ড থেকে একই বিলের টাকা দুইবার কেটে নেওয়া হয়েছে, ইনভয়েস দেখুন", "bn", "billing"),
        (
            "Gusto ko pong ibalik yung sapatos na binili ko, maliit po ang size. Paano po mag-return?",
            "tl",
            "returns",
        ),
        ("mera order cancel karna hai, abhi ship nahi hua", "hi", "orders"),
        ("¿Tienen este modelo en talla 42? Quiero comprar dos pares", "es", "sales"),
        ("I can't log in to the app, the password reset email never arrives", "en", "support"),
    ],
)
def test_first_class_languages_reach_their_department(
    pipeline: Pipeline, text: str, language: str, department: str
) -> None:
    routing = _decide(pipeline, text).routing
    assert routing.language == language
    assert routing.department == department
    assert routing.reasons[0].startswith(f"language:{language}")
    assert any(r.startswith("model:top=") for r in routing.reasons)


def test_languages_beyond_the_first_class_come_from_the_general_identifier(pipeline: Pipeline) -> None:
    assert (
        _decide(pipeline, "Bonjour, je voudrais annuler ma commande s'il vous plaît").routing.language == "fr"
    )
    assert _decide(pipeline, "Добрый день, где мой заказ?").routing.language == "ru"


def test_a_message_without_letters_has_an_undetermined_language(pipeline: Pipeline) -> None:
    assert _decide(pipeline, "👍 4471 !!").routing.language == "und"


def test_a_supervisor_demand_escalates_with_its_reasons(pipeline: Pipeline) -> None:
    routing = _decide(pipeline, "This is the third time. I want to speak to your manager right now.").routing
    assert routing.escalate
    assert routing.priority in ("high", "urgent")
    assert "cue:supervisor" in routing.reasons


def test_a_legal_threat_is_urgent(pipeline: Pipeline) -> None:
    routing = _decide(
        pipeline, "You charged me twice and ignore me. My lawyer will take legal action."
    ).routing
    assert routing.escalate and routing.priority == "urgent"


def test_a_calm_question_is_not_escalated(pipeline: Pipeline) -> None:
    routing = _decide(pipeline, "Hi, what are your opening hours on Sunday?").routing
    assert not routing.escalate
    assert routing.priority == "normal"


def test_a_follow_up_stays_with_its_conversations_department(pipeline: Pipeline) -> None:
    context = ConversationContext("billing", 1, NOW - timedelta(hours=2), False)
    routing = _decide(pipeline, "any update on this?", context).routing
    assert routing.department == "billing"
    assert "affinity:billing" in routing.reasons
    assert routing.confidence >= RouterConfig().min_confidence


def test_a_follow_up_that_clearly_belongs_elsewhere_leaves(pipeline: Pipeline) -> None:
    context = ConversationContext("billing", 1, NOW - timedelta(hours=2), False)
    routing = _decide(pipeline, "I forgot my password and cannot log in to the app", context).routing
    if routing.department != "billing":
        assert "affinity:left=billing" in routing.reasons
    else:  # the model was not sure enough to move it
        assert "affinity:billing" in routing.reasons


def test_writing_again_about_an_unresolved_issue_escalates(pipeline: Pipeline) -> None:
    context = ConversationContext("shipping", 2, NOW - timedelta(days=1), True)
    routing = _decide(pipeline, "still nothing, where is it?", context).routing
    assert routing.escalate
    assert "conversation:repeat-unresolved" in routing.reasons


def test_an_old_unresolved_conversation_does_not_escalate_by_itself(pipeline: Pipeline) -> None:
    context = ConversationContext("shipping", 2, NOW - timedelta(days=60), True)
    routing = _decide(pipeline, "hello again, a new question about sizes", context).routing
    assert "conversation:repeat-unresolved" not in routing.reasons


def test_auto_replies_go_to_general_at_low_priority(pipeline: Pipeline) -> None:
    decision = _decide(
        pipeline, "I am out of the office until Monday.", metadata={"auto_submitted": "auto-reply"}
    )
    assert decision.routing.department == "general"
    assert decision.routing.priority == "low"
    assert not decision.drop


def test_auto_replies_are_dropped_when_configured() -> None:
    pipeline = build_decider(RouterConfig(auto_replies="drop"), lambda: NOW)
    assert _decide(pipeline, "Delivery failed", metadata={"auto_submitted": "bounce"}).drop


def test_rules_come_before_the_model() -> None:
    rule = RuleConfig.model_validate(
        {"name": "vip", "match": {"sender_domain": "example.org"}, "department": "sales", "priority": "high"}
    )
    pipeline = build_decider(RouterConfig(rules=(rule,)), lambda: NOW)
    routing = _decide(pipeline, "where is my parcel?").routing
    assert routing.department == "sales"
    assert routing.confidence == 1.0
    assert routing.priority == "high"
    assert "rule:vip" in routing.reasons
    assert not any(r.startswith("model:") for r in routing.reasons)


def test_only_configured_departments_can_win() -> None:
    pipeline = build_decider(RouterConfig(departments=("billing", "general")), lambda: NOW)
    routing = _decide(pipeline, "where is my parcel? the tracking has not moved").routing
    assert routing.department in ("billing", "general")


def test_a_batch_gets_one_decision_per_message_in_order(pipeline: Pipeline) -> None:
    texts = ["refund to my card please", "where is my parcel", "I love the new packaging!"] * 50
    decisions = pipeline.decide_batch([_message(t) for t in texts], [ConversationContext()] * len(texts))
    assert len(decisions) == len(texts)
    singles = [_decide(pipeline, t).routing.department for t in texts[:3]]
    assert [d.routing.department for d in decisions[:3]] == singles


def test_the_language_hint_settles_a_short_message(pipeline: Pipeline) -> None:
    routing = _decide(pipeline, "ok po", metadata={"language_hint": "tl-PH"}).routing
    assert routing.language == "tl"
    assert routing.reasons[0] == "language:tl(hint)"


def test_the_script_outweighs_the_language_hint(pipeline: Pipeline) -> None:
    routing = _decide(pipeline, "ஆர்டர் எங்கே", metadata={"language_hint": "en"}).routing
    assert routing.language == "ta"
