"""The generic webhook channel over real HTTP (uvicorn) against the real broker.

Each test has its own topics; every record is read back from ``sb.inbound``.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import pytest

from connectors.registry import Registry
from connectors.signatures import sign_hmac_sha256
from connectors.webhook import SIGNATURE_HEADER, WebhookConfig, WebhookConnector
from models.config import KafkaConfig
from models.ids import conversation_id, message_id
from models.topics import Topics
from tests.connectors.fixtures.harness import (
    Live,
    by_native_id,
    fixture_bytes,
    inbound,
    live_channel,
)

SECRET = "a-long-shared-webhook-secret-0123"
NAME = "gateway"
PATH = f"/channels/{NAME}/"


def config(**overrides: Any) -> WebhookConfig:
    return WebhookConfig.model_validate({"name": NAME, "type": "webhook", "secret": SECRET, **overrides})


def live(
    kafka_config: KafkaConfig, topics: Topics, webhook: WebhookConfig
) -> AbstractAsyncContextManager[Live]:
    return live_channel(
        kafka_config, topics, NAME, "webhook", lambda context: WebhookConnector(webhook, context)
    )


def signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"Content-Type": "application/json", SIGNATURE_HEADER: sign_hmac_sha256(secret, body)}


async def post(client: httpx.AsyncClient, body: bytes, **headers: str) -> httpx.Response:
    return await client.post(PATH, content=body, headers={**signed(body), **headers})


def message_body(native_id: str, text: str = "hello") -> bytes:
    return json.dumps({"id": native_id, "sender": {"id": "user-1"}, "text": text}).encode()


async def test_signed_message_becomes_one_record(kafka_config: KafkaConfig, created_topics: Topics) -> None:
    body = fixture_bytes("webhook_message.json")
    async with live(kafka_config, created_topics, config()) as channel:
        response = await post(channel.client, body)
        harness = channel.harness
    assert response.status_code == 200, response.text
    expected_id = message_id(NAME, "gw-000123")
    assert response.json() == {"accepted": 1, "duplicates": 0, "message_ids": [expected_id]}

    [record] = await inbound(kafka_config, created_topics.inbound)
    assert record.message_id == expected_id
    assert (record.channel, record.channel_instance, record.native_id) == ("webhook", NAME, "gw-000123")
    assert record.conversation_id == conversation_id(NAME, "ticket-9") == f"{NAME}:ticket-9"
    assert (record.sender.id, record.sender.name) == ("+14155550100", "Asha Rao")
    assert record.subject == "Order 4471"
    assert record.text == record.body == "My order 4471 has not arrived yet, can you check?"
    [attachment] = record.attachments
    assert attachment.ref == "https://gateway.example/files/1"
    assert attachment.sha256 == "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    assert (attachment.filename, attachment.content_type, attachment.size) == (
        "receipt.jpg",
        "image/jpeg",
        20480,
    )
    assert record.metadata == {
        "language_hint": "en",
        "gateway": "acme-sms",
        "sent_at": "2026-11-23T04:30:00Z",
    }
    assert harness.metric("switchboard_channel_published_total", channel="webhook", instance=NAME) == 1


async def test_the_bare_channel_path_is_served_too(kafka_config: KafkaConfig, created_topics: Topics) -> None:
    body = message_body("gw-root")
    async with live(kafka_config, created_topics, config()) as channel:
        response = await channel.client.post(PATH.rstrip("/"), content=body, headers=signed(body))
    assert response.status_code == 200, response.text
    assert [r.native_id for r in await inbound(kafka_config, created_topics.inbound)] == ["gw-root"]


async def test_batch_and_default_conversation(kafka_config: KafkaConfig, created_topics: Topics) -> None:
    async with live(kafka_config, created_topics, config()) as channel:
        response = await post(channel.client, fixture_bytes("webhook_batch.json"))
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 2
    records = by_native_id(await inbound(kafka_config, created_topics.inbound))
    assert sorted(records) == ["gw-000201", "gw-000202"]
    assert records["gw-000201"][0].conversation_id == f"{NAME}:user-7"
    assert records["gw-000202"][0].conversation_id == f"{NAME}:c-88"
    assert records["gw-000202"][0].text == "என் பார்சல் எங்கே?"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing_signature"),
        ({SIGNATURE_HEADER: sign_hmac_sha256("the-wrong-secret-entirely-000", b"x")}, "bad_signature"),
        ({SIGNATURE_HEADER: "md5=abc"}, "bad_signature"),
    ],
)
async def test_unsigned_or_wrongly_signed_is_401_and_not_published(
    kafka_config: KafkaConfig, created_topics: Topics, headers: dict[str, str], reason: str
) -> None:
    body = fixture_bytes("webhook_message.json")
    async with live(kafka_config, created_topics, config()) as channel:
        harness, client = channel.harness, channel.client
        response = await client.post(PATH, content=body, headers=headers)
        tampered = await client.post(PATH, content=body.replace(b"4471", b"4472"), headers=signed(body))
    assert response.status_code == 401
    assert response.json()["error"] == reason
    assert tampered.status_code == 401
    assert SECRET not in response.text + tampered.text
    assert harness.gate.attempts == 0
    assert await inbound(kafka_config, created_topics.inbound) == []


async def test_replays_give_one_record_with_the_same_id(
    kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    body = fixture_bytes("webhook_message.json")
    async with live(kafka_config, created_topics, config()) as channel:
        harness, client = channel.harness, channel.client
        answers = [await post(client, body) for _ in range(3)]
        concurrent = await asyncio.gather(*(post(client, message_body("gw-burst")) for _ in range(8)))
    assert [a.status_code for a in answers + concurrent] == [200] * 11
    assert [a.json()["duplicates"] for a in answers] == [0, 1, 1]
    assert len({a.json()["message_ids"][0] for a in answers}) == 1
    assert sum(a.json()["accepted"] for a in concurrent) == 1
    records = by_native_id(await inbound(kafka_config, created_topics.inbound))
    assert {k: len(v) for k, v in records.items()} == {"gw-000123": 1, "gw-burst": 1}
    assert harness.gate.attempts == 2
    assert harness.metric("switchboard_channel_duplicates_total", channel="webhook", instance=NAME) == 9


async def test_retry_while_first_attempt_is_publishing_shares_its_outcome(
    kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    body = message_body("gw-slow")
    async with live(kafka_config, created_topics, config(publish_deadline=10)) as channel:
        harness, client = channel.harness, channel.client
        harness.gate.stall()
        first = asyncio.create_task(post(client, body))
        await asyncio.sleep(0.3)
        retry = asyncio.create_task(post(client, body))
        await asyncio.sleep(0.3)
        assert not first.done() and not retry.done()
        harness.gate.open()
        answers = await asyncio.gather(first, retry)
    assert [a.status_code for a in answers] == [200, 200]
    assert [a.json()["duplicates"] for a in answers] == [0, 1]
    assert harness.gate.attempts == 1
    assert len(await inbound(kafka_config, created_topics.inbound)) == 1


async def test_bad_bodies_get_400_with_the_reason(kafka_config: KafkaConfig, created_topics: Topics) -> None:
    cases = {
        b'{"id": "x", "sender": {"id": "u"}, "text": ': "body is not JSON",
        b"[1, 2]": "must be a JSON object",
        b'{"id": "x", "text": "hi"}': "sender: Field required",
        b'{"id": "x", "sender": {"id": "u"}, "text": "hi", "colour": "red"}': "colour: Extra inputs",
        b'{"id": "x", "sender": {"id": "u"}, "text": " "}': "neither text nor attachments",
        b'{"id": "x", "sender": {"id": "u"}, "text": "a", "sent_at": "2026-01-01T00:00:00"}': "sent_at",
        b'{"messages": []}': "messages: List should have at least 1 item",
    }
    async with live(kafka_config, created_topics, config()) as channel:
        harness, client = channel.harness, channel.client
        answers = {body: await post(client, body) for body in cases}
    for body, expected in cases.items():
        assert answers[body].status_code == 400, body
        assert expected in answers[body].json()["detail"], (body, answers[body].text)
    assert harness.gate.attempts == 0


async def test_oversized_body_is_413_declared_or_streamed(
    kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    body = message_body("gw-big", "x" * 5000)

    async def chunks() -> Any:
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    async with live(kafka_config, created_topics, config(max_body_bytes=4096)) as channel:
        client = channel.client
        declared = await post(client, body)
        streamed = await client.post(PATH, content=chunks(), headers=signed(body))
        small = await post(client, message_body("gw-small"))
    assert declared.status_code == 413 and declared.json()["error"] == "too_large"
    assert streamed.status_code == 413
    assert small.status_code == 200
    assert [r.native_id for r in await inbound(kafka_config, created_topics.inbound)] == ["gw-small"]


async def test_rate_limit_is_429_with_retry_after(kafka_config: KafkaConfig, created_topics: Topics) -> None:
    async with live(kafka_config, created_topics, config(rate_limit=0.5, rate_burst=2)) as channel:
        answers = [await post(channel.client, message_body(f"gw-r{i}")) for i in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 429, 429]
    assert int(answers[2].headers["Retry-After"]) >= 1
    assert len(await inbound(kafka_config, created_topics.inbound)) == 2


async def test_broker_down_is_503_then_exactly_once_after_recovery(
    kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    bodies = [message_body(f"gw-d{i}", f"message {i}") for i in range(5)]
    async with live(kafka_config, created_topics, config()) as channel:
        harness, client = channel.harness, channel.client
        harness.gate.close()
        down = [await post(client, body) for body in bodies]
        assert await inbound(kafka_config, created_topics.inbound) == []
        harness.gate.open()
        # The platform retries everything it was refused, some of it twice.
        retried = [await post(client, body) for body in bodies + bodies[:2]]
    assert {a.status_code for a in down} == {503}
    assert all(int(a.headers["Retry-After"]) >= 1 for a in down)
    assert {a.json()["error"] for a in down} == {"publish_failed"}
    assert [a.status_code for a in retried] == [200] * 7
    records = by_native_id(await inbound(kafka_config, created_topics.inbound))
    assert {k: len(v) for k, v in records.items()} == {f"gw-d{i}": 1 for i in range(5)}
    assert harness.metric("switchboard_channel_publish_failures_total", channel="webhook", instance=NAME) == 5


async def test_confirmation_after_the_deadline_is_503_then_the_retry_is_a_duplicate(
    kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    body = message_body("gw-late")
    async with live(kafka_config, created_topics, config(publish_deadline=0.3)) as channel:
        harness, client = channel.harness, channel.client
        harness.gate.stall()
        late = await post(client, body)
        harness.gate.open()  # the broker confirms after the platform was told to retry
        await asyncio.sleep(0.5)
        retry = await post(client, body)
    assert late.status_code == 503 and late.json()["error"] == "publish_timeout"
    assert retry.status_code == 200 and retry.json()["duplicates"] == 1
    assert harness.gate.attempts == 1
    assert len(await inbound(kafka_config, created_topics.inbound)) == 1


async def test_processed_ids_survive_a_connector_restart(
    kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    body = fixture_bytes("webhook_message.json")
    async with live(kafka_config, created_topics, config()) as channel:
        harness, client = channel.harness, channel.client
        assert (await post(client, body)).status_code == 200
    # A new process: fresh memory, state restored from sb.state.
    async with live(kafka_config, created_topics, config()) as channel:
        harness, client = channel.harness, channel.client
        again = await post(client, body)
        other = await post(client, message_body("gw-new"))
    assert again.status_code == 200 and again.json()["duplicates"] == 1
    assert other.json()["accepted"] == 1
    assert harness.gate.attempts == 1
    records = by_native_id(await inbound(kafka_config, created_topics.inbound))
    assert {k: len(v) for k, v in records.items()} == {"gw-000123": 1, "gw-new": 1}


async def test_stopped_connector_answers_503(kafka_config: KafkaConfig, created_topics: Topics) -> None:
    async with live(kafka_config, created_topics, config()) as channel:
        await channel.connector.stop()
        await channel.connector.stop()  # idempotent
        response = await post(channel.client, message_body("gw-late-comer"))
    assert response.status_code == 503 and response.json()["error"] == "shutting_down"


def test_config_through_the_registry() -> None:
    registry = Registry.default()
    channel_type = registry.get("webhook")
    assert channel_type.http and channel_type.channel == "webhook"
    parsed = channel_type.config_model.model_validate({"name": "gw", "type": "webhook", "secret": SECRET})
    assert SECRET not in repr(parsed)
    with pytest.raises(ValueError, match="secret"):
        channel_type.config_model.model_validate({"name": "gw", "type": "webhook", "secret": "short"})
    with pytest.raises(ValueError, match="sekret"):
        channel_type.config_model.model_validate(
            {"name": "gw", "type": "webhook", "secret": SECRET, "sekret": 1}
        )
