"""The real pipeline inside the real routing service, on the real broker.

Messages in Tamil, Bengali and Tagalog (native script, romanized and code-mixed) go in on
``sb.inbound``; each must come out on its department's queue with the language identified,
and an escalation copy must reach ``sb.escalations``.
"""

from __future__ import annotations

from datetime import UTC, datetime

import structlog
from prometheus_client import CollectorRegistry

from models import RoutedMessage
from models.config import KafkaConfig, RouterConfig, Settings
from models.topics import Topics
from router.pipeline import build_decider
from router.service import RouterService, RouterTuning
from tests.router.router_worker import TEST_TUNING
from tests.router.standin import inbound
from tests.router.test_service import RecordingHealth, drain, eventually, publish, running

CASES = [
    ("ta", "shipping", "என் பார்சல் இன்னும் வரவில்லை. டிராக்கிங் நம்பர் மூன்று நாளாக நகரவில்லை, கூரியர் எங்கே?"),
    ("bn", "billing", "আমার কার্ড থেকে একই ইনভয়েসের টাকা দুইবার কেটে নেওয়া হয়েছে, দয়া করে দেখুন"),
    (
        "tl",
        "returns",
        "Gusto ko pong ibalik yung sapatos na binili ko, maliit po ang size. Paano po mag-return?",
    ),
    ("ta", "orders", "en order cancel pannanum, innum ship aagala, order number OD4471"),
    ("bn", "support", "app e login korte parchi na, OTP ashche na, ki korbo?"),
    (
        "tl",
        "complaints",
        "Ikatlong beses na ito! Walang sumasagot. Gusto kong makausap ang manager ninyo ngayon din.",
    ),
]


async def test_first_class_languages_reach_their_departments_through_the_service(
    kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    messages = [inbound(i, text, conversation=f"e2e-{i}") for i, (_, _, text) in enumerate(CASES)]
    await publish(kafka_config, created_topics, messages)
    settings = Settings(kafka=kafka_config, router=RouterConfig())
    service = RouterService(
        settings,
        build_decider(settings.router, lambda: datetime.now(UTC)),
        registry=CollectorRegistry(),
        health=RecordingHealth(),
        logger=structlog.get_logger("e2e"),
        tuning=RouterTuning(loop=TEST_TUNING),
    )
    departments = sorted({department for _, department, _ in CASES})
    queues = [created_topics.department(d) for d in departments] + [created_topics.triage]

    async def all_routed() -> bool:
        return len(await drain(kafka_config, queues)) >= len(CASES)

    async with running(service):
        await eventually(all_routed)
    routed = {
        r.message_id: (record.topic, r)
        for record in await drain(kafka_config, queues)
        for r in [RoutedMessage.from_json_bytes(record.value or b"")]
    }
    assert len(routed) == len(CASES)
    for message, (language, department, _) in zip(messages, CASES, strict=True):
        topic, record = routed[message.message_id]
        assert record.routing.department == department, record.routing.reasons
        assert topic == created_topics.department(department)
        assert record.routing.language == language
        assert record.routing.model.startswith("default-")
    escalated = await drain(kafka_config, [created_topics.escalations])
    assert messages[-1].message_id in {
        RoutedMessage.from_json_bytes(r.value or b"").message_id for r in escalated
    }
