"""The WhatsApp Cloud API channel over real HTTP, records read back from the broker."""

from __future__ import annotations

import asyncio
import hashlib
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import pytest

from connectors.signatures import sign_hub_sha256
from connectors.whatsapp import WhatsAppConfig, WhatsAppConnector
from models.config import KafkaConfig
from models.ids import message_id
from models.topics import Topics
from tests.connectors.fixtures.harness import (
    Live,
    by_native_id,
    fixture_bytes,
    inbound,
    live_channel,
    meta,
)

NAME = "support-whatsapp"
PATH = f"/channels/{NAME}/"
APP_SECRET = "6d1d4a8b0e2f4c7a9b3e5f7a1c2d3e4f"
VERIFY_TOKEN = "meatyhamhock"
CONVERSATION = f"{NAME}:106540352242922:16315551181"
MESSAGES = [
    "whatsapp_text.json",
    "whatsapp_interactive_button.json",
    "whatsapp_interactive_list.json",
    "whatsapp_image.json",
    "whatsapp_document.json",
    "whatsapp_audio.json",
    "whatsapp_location.json",
]


def live(kafka_config: KafkaConfig, topics: Topics, **overrides: Any) -> AbstractAsyncContextManager[Live]:
    config = WhatsAppConfig.model_validate(
        {
            "name": NAME,
            "type": "whatsapp",
            "app_secret": APP_SECRET,
            "verify_token": VERIFY_TOKEN,
            **overrides,
        }
    )
    return live_channel(
        kafka_config, topics, NAME, "whatsapp", lambda context: WhatsAppConnector(config, context)
    )


async def post(client: httpx.AsyncClient, body: bytes, secret: str = APP_SECRET) -> httpx.Response:
    headers = {"Content-Type": "application/json", "X-Hub-Signature-256": sign_hub_sha256(secret, body)}
    return await client.post(PATH, content=body, headers=headers)


async def test_verification_handshake(kafka_config: KafkaConfig, created_topics: Topics) -> None:
    query = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444"}
    async with live(kafka_config, created_topics) as channel:
        good = await channel.client.get(PATH, params=query)
        wrong_token = await channel.client.get(PATH, params={**query, "hub.verify_token": "nope"})
        wrong_mode = await channel.client.get(PATH, params={**query, "hub.mode": "unsubscribe"})
        missing = await channel.client.get(PATH)
    assert (good.status_code, good.text, good.headers["content-type"]) == (
        200,
        "1158201444",
        "text/plain; charset=utf-8",
    )
    assert [r.status_code for r in (wrong_token, wrong_mode, missing)] == [403, 403, 403]
    assert VERIFY_TOKEN not in wrong_token.text


async def test_every_message_type_becomes_a_record(kafka_config: KafkaConfig, created_topics: Topics) -> None:
    async with live(kafka_config, created_topics) as channel:
        answers = [await post(channel.client, fixture_bytes(name)) for name in MESSAGES]
        status = await post(channel.client, fixture_bytes("whatsapp_status_delivered.json"))
    assert [a.status_code for a in answers] == [200] * len(MESSAGES)
    assert (status.status_code, status.json()) == (200, {"accepted": 0, "duplicates": 0})
    records = await inbound(kafka_config, created_topics.inbound)
    assert len(records) == len(MESSAGES)
    assert {r.conversation_id for r in records} == {CONVERSATION}
    assert {(r.sender.id, r.sender.name) for r in records} == {("+16315551181", "Kerry Fisher")}
    assert {r.recipients for r in records} == {("+15550783881",)}
    by_type = {meta(r, "whatsapp", "type"): r for r in records}

    text = by_type["text"]
    assert text.native_id == "wamid.HBgLMTYzMTU1NTExODEVAgASGBQzQUJCRDhFQzM0MkU4MzlDNzRGRQA="
    assert text.message_id == message_id(NAME, text.native_id)
    assert text.text == "Hola, mi pedido 5520 llegó incompleto"
    assert text.metadata["sent_at"] == "2025-11-23T10:00:00Z"

    replies = {
        meta(r, "interactive", "type"): r for r in records if meta(r, "whatsapp", "type") == "interactive"
    }
    assert replies["button_reply"].text == "Yes, refund me"
    assert replies["button_reply"].metadata["interactive"] == {
        "type": "button_reply",
        "id": "refund-yes",
        "title": "Yes, refund me",
    }
    assert replies["button_reply"].in_reply_to == "wamid.HBgLMTYzMTU1NTExODEVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA"
    assert replies["list_reply"].text == "Shipping"
    assert meta(replies["list_reply"], "interactive", "description") == "Delivery, tracking and delays"

    image = by_type["image"]
    assert image.text == "Así llegó la caja"
    [photo] = image.attachments
    assert photo.ref == "whatsapp:media/1482737662458732"
    assert photo.content_type == "image/jpeg"
    assert photo.sha256 == hashlib.sha256(b"crushed box photo").hexdigest()

    [pdf] = by_type["document"].attachments
    assert (pdf.filename, pdf.content_type) == ("factura-5520.pdf", "application/pdf")
    [voice] = by_type["audio"].attachments
    assert voice.content_type == "audio/ogg; codecs=opus" and by_type["audio"].metadata["voice"] is True

    location = by_type["location"]
    assert location.metadata["location"] == {
        "latitude": 19.4326,
        "longitude": -99.1332,
        "name": "Oficina de correos",
        "address": "Av. Juárez 10, CDMX",
    }


async def test_one_post_with_several_messages(kafka_config: KafkaConfig, created_topics: Topics) -> None:
    body = fixture_bytes("whatsapp_multi.json")
    async with live(kafka_config, created_topics) as channel:
        first = await post(channel.client, body)
        again = await post(channel.client, body)
    assert first.json() == {"accepted": 3, "duplicates": 0}
    assert again.json() == {"accepted": 0, "duplicates": 3}
    records = by_native_id(await inbound(kafka_config, created_topics.inbound))
    assert len(records) == 3 and all(len(v) == 1 for v in records.values())
    rahul = records["wamid.HBgMOTE5ODc2NTQzMjEwFQIAEhgUM0FNVUxUSTAwMDAwMDAwMDAwMDJBAA=="][0]
    assert (rahul.sender.id, rahul.sender.name) == ("+919876543210", "Rahul")
    assert rahul.conversation_id == f"{NAME}:106540352242922:919876543210"


async def test_partly_published_post_is_retried_without_duplicates(
    kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    body = fixture_bytes("whatsapp_multi.json")
    async with live(kafka_config, created_topics) as channel:
        channel.gate.close_after(1)
        broken = await post(channel.client, body)
        channel.gate.open()
        retried = await asyncio.gather(post(channel.client, body), post(channel.client, body))
    assert broken.status_code == 503
    assert sorted(r.json()["accepted"] for r in retried) == [0, 2]
    records = by_native_id(await inbound(kafka_config, created_topics.inbound))
    assert len(records) == 3 and all(len(v) == 1 for v in records.values())


@pytest.mark.parametrize("secret", ["wrong-app-secret", ""])
async def test_bad_signature_is_401(kafka_config: KafkaConfig, created_topics: Topics, secret: str) -> None:
    body = fixture_bytes("whatsapp_text.json")
    async with live(kafka_config, created_topics) as channel:
        wrong = (
            await post(channel.client, body, secret=secret)
            if secret
            else await channel.client.post(PATH, content=body)
        )
        assert channel.gate.attempts == 0
    assert wrong.status_code == 401
    assert await inbound(kafka_config, created_topics.inbound) == []


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b'{"object": "page", "entry": []}', "object: Input should be 'whatsapp_business_account'"),
        (b'{"object": "whatsapp_business_account"}', "entry: Field required"),
        (
            b'{"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages",'
            b' "value": {"messages": [{"id": "wamid.x", "type": "text"}]}}]}]}',
            "entry[0].changes[0].value.messages[0].from: Field required",
        ),
    ],
)
async def test_wrong_shape_is_400(
    kafka_config: KafkaConfig, created_topics: Topics, body: bytes, detail: str
) -> None:
    async with live(kafka_config, created_topics) as channel:
        answer = await post(channel.client, body)
    assert answer.status_code == 400
    assert detail in answer.json()["detail"]


async def test_broker_down_then_meta_retries(kafka_config: KafkaConfig, created_topics: Topics) -> None:
    bodies = [fixture_bytes(name) for name in MESSAGES]
    async with live(kafka_config, created_topics, publish_deadline=1.0) as channel:
        channel.gate.close()
        down = [await post(channel.client, b) for b in bodies]
        channel.gate.open()
        up = [await post(channel.client, b) for b in bodies + bodies[:3]]
    assert {a.status_code for a in down} == {503}
    assert {a.status_code for a in up} == {200}
    records = await inbound(kafka_config, created_topics.inbound)
    assert len(records) == len(MESSAGES) == len({r.message_id for r in records})
