"""The Telegram channel: webhook over real HTTP and long polling, records read back from the broker."""

from __future__ import annotations

import asyncio
import json
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from connectors.telegram import SECRET_HEADER, TelegramConfig, TelegramConnector
from models.config import KafkaConfig
from models.errors import PublishError
from models.ids import message_id
from models.topics import Topics
from tests.connectors.fixtures.harness import (
    Live,
    by_native_id,
    channel_context,
    fixture_bytes,
    fixture_json,
    inbound,
    live_channel,
)

NAME = "support-telegram"
PATH = f"/channels/{NAME}/"
SECRET = "s3cret_Token-from-setWebhook"
CUSTOMER_UPDATES = [
    "telegram_message.json",
    "telegram_edited_message.json",
    "telegram_channel_post.json",
    "telegram_photo_caption.json",
    "telegram_document.json",
]
IGNORED_UPDATES = [
    "telegram_callback_query.json",
    "telegram_new_chat_members.json",
    "telegram_bot_message.json",
]


def config(**overrides: Any) -> TelegramConfig:
    return TelegramConfig.model_validate(
        {"name": NAME, "type": "telegram", "secret_token": SECRET, **overrides}
    )


def live(kafka_config: KafkaConfig, topics: Topics, **overrides: Any) -> AbstractAsyncContextManager[Live]:
    return live_channel(
        kafka_config,
        topics,
        NAME,
        "telegram",
        lambda context: TelegramConnector(config(**overrides), context),
    )


def headers(secret: str = SECRET) -> dict[str, str]:
    return {"Content-Type": "application/json", SECRET_HEADER: secret}


async def test_customer_updates_become_records_and_the_rest_is_ignored(
    kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    async with live(kafka_config, created_topics) as channel:
        answers = {
            name: await channel.client.post(PATH, content=fixture_bytes(name), headers=headers())
            for name in CUSTOMER_UPDATES + IGNORED_UPDATES
        }
    assert {name: a.status_code for name, a in answers.items()} == dict.fromkeys(answers, 200)
    records = await inbound(kafka_config, created_topics.inbound)
    assert len(records) == len(CUSTOMER_UPDATES)
    grouped = by_native_id(records)

    original, edited = sorted(grouped["508231447:1365"], key=lambda r: "edited" in r.metadata)
    assert original.message_id == message_id(NAME, "508231447:1365")
    assert original.conversation_id == f"{NAME}:508231447"
    assert (original.sender.id, original.sender.name) == ("508231447", "Priya Raman")
    assert original.text == "வணக்கம், என் ஆர்டர் 4471 இன்னும் வரவில்லை"
    assert original.metadata["language_hint"] == "ta"
    assert original.metadata["sent_at"] == "2025-11-23T10:00:00Z"
    assert "edited" not in original.metadata
    assert edited.metadata["edited"] is True and edited.metadata["edit_date"] == "2025-11-23T10:01:00Z"
    assert edited.message_id != original.message_id
    assert edited.text.endswith("(tracking RX889)")

    [post] = grouped["-1001234567890:77"]
    assert (post.sender.id, post.sender.name) == ("-1001234567890", "Carlos M")
    assert post.conversation_id == f"{NAME}:-1001234567890"
    assert post.metadata["telegram"] == {
        "update_id": 815100003,
        "update_type": "channel_post",
        "chat_type": "channel",
    }

    [photo] = grouped["508231447:1366"]
    assert photo.text == "The box arrived crushed"
    assert photo.in_reply_to == "508231447:1365"
    [picture] = photo.attachments
    assert (picture.ref, picture.size, picture.content_type) == (
        "telegram:file/AgACAgQAAxkBAAIBQ2VhS0-large",
        84512,
        "image/jpeg",
    )

    [document] = grouped["508231447:1367"]
    assert document.text == ""
    [pdf] = document.attachments
    assert (pdf.filename, pdf.content_type, pdf.size, pdf.ref) == (
        "invoice-4471.pdf",
        "application/pdf",
        48213,
        "telegram:file/BQACAgQAAxkBAAIBRGVhS1invoice",
    )


@pytest.mark.parametrize("secret", [None, "", "wrong-token", SECRET + "x"])
async def test_secret_token_is_required(
    kafka_config: KafkaConfig, created_topics: Topics, secret: str | None
) -> None:
    sent = {"Content-Type": "application/json"} if secret is None else headers(secret)
    async with live(kafka_config, created_topics) as channel:
        answer = await channel.client.post(PATH, content=fixture_bytes("telegram_message.json"), headers=sent)
        assert channel.gate.attempts == 0
    assert answer.status_code == 401
    assert await inbound(kafka_config, created_topics.inbound) == []


async def test_redelivered_update_is_one_record(kafka_config: KafkaConfig, created_topics: Topics) -> None:
    body = fixture_bytes("telegram_message.json")
    async with live(kafka_config, created_topics) as channel:
        answers = [await channel.client.post(PATH, content=body, headers=headers()) for _ in range(3)]
        answers += await asyncio.gather(
            *(channel.client.post(PATH, content=body, headers=headers()) for _ in range(5))
        )
        assert channel.gate.attempts == 1
    assert {a.status_code for a in answers} == {200}
    assert len(await inbound(kafka_config, created_topics.inbound)) == 1


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b'{"message": {"message_id": 1}}', "update_id: Field required"),
        (b'{"update_id": 5, "message": {"message_id": 1, "date": 1}}', "message.chat: Field required"),
        (b'{"update_id": ', "not JSON"),
        (b"[]", "valid dictionary"),
    ],
)
async def test_malformed_update_is_400(
    kafka_config: KafkaConfig, created_topics: Topics, body: bytes, detail: str
) -> None:
    async with live(kafka_config, created_topics) as channel:
        answer = await channel.client.post(PATH, content=body, headers=headers())
    assert answer.status_code == 400
    assert detail in answer.json()["detail"]


async def test_broker_down_then_telegram_retries(kafka_config: KafkaConfig, created_topics: Topics) -> None:
    bodies = [fixture_bytes(name) for name in CUSTOMER_UPDATES]
    async with live(kafka_config, created_topics) as channel:
        channel.gate.close()
        refused = [await channel.client.post(PATH, content=b, headers=headers()) for b in bodies]
        channel.gate.open()
        retried = [await channel.client.post(PATH, content=b, headers=headers()) for b in bodies + bodies]
    assert {a.status_code for a in refused} == {503}
    assert {a.status_code for a in retried} == {200}
    records = await inbound(kafka_config, created_topics.inbound)
    assert len(records) == len(CUSTOMER_UPDATES) == len({r.message_id for r in records})


# --------------------------------------------------------------------------------- polling


class FakeBotApi:
    """getUpdates as Telegram serves it: everything from *offset* on, until confirmed."""

    def __init__(self, updates: list[dict[str, Any]]) -> None:
        self.updates = updates
        self.offsets: list[int | None] = []
        self.drained = asyncio.Event()

    async def get_updates(self, *, offset: int | None, timeout: int, limit: int) -> list[dict[str, Any]]:
        self.offsets.append(offset)
        pending = [u for u in self.updates if offset is None or u["update_id"] >= offset][:limit]
        if not pending:
            self.drained.set()
            await asyncio.sleep(min(timeout, 0.05))
        return pending

    async def get_me(self) -> dict[str, Any]:
        return {"id": 1, "username": "acme_bot"}


def polling_config() -> TelegramConfig:
    return TelegramConfig.model_validate(
        {"name": NAME, "type": "telegram", "mode": "polling", "bot_token": "123:abc"}
    )


async def test_polling_publishes_in_order_and_confirms_only_durable_updates(
    kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    updates = [fixture_json(name) for name in CUSTOMER_UPDATES + IGNORED_UPDATES]
    updates.insert(2, {"update_id": 815100004, "message": {"text": "no chat"}})  # malformed, kept aside
    updates[2]["update_id"] = 815099999
    api = FakeBotApi(updates)
    async with channel_context(kafka_config, created_topics, NAME, "telegram") as harness:
        connector = TelegramConnector(polling_config(), harness.context, api=api)
        assert connector.asgi_app().routes == []  # no webhook endpoint in polling mode
        harness.gate.close()
        with pytest.raises(PublishError, match="unreachable"):
            await connector.poll_once()
        assert connector.offset == 815099999 + 1  # only the malformed one (quarantined) is past
        harness.gate.open()
        await connector.start()
        await asyncio.wait_for(api.drained.wait(), timeout=20)
        await connector.stop()
    assert connector.offset == max(u["update_id"] for u in updates) + 1
    assert api.offsets[0] is None and api.offsets[1] == 815099999 + 1
    records = await inbound(kafka_config, created_topics.inbound)
    assert len(records) == len(CUSTOMER_UPDATES) == len({r.message_id for r in records})
    # One chat is one partition: its records are in update order.
    chat = [r for r in records if r.conversation_id == f"{NAME}:508231447"]
    assert [(r.native_id, "edited" in r.metadata) for r in chat] == [
        ("508231447:1365", False),
        ("508231447:1365", True),
        ("508231447:1366", False),
        ("508231447:1367", False),
    ]
    assert harness.metric("switchboard_channel_quarantined_total", channel="telegram", instance=NAME) == 1


def test_config_requires_the_credentials_of_its_mode() -> None:
    with pytest.raises(ValueError, match="secret_token"):
        TelegramConfig.model_validate({"name": NAME, "type": "telegram"})
    with pytest.raises(ValueError, match="A-Z"):
        TelegramConfig.model_validate({"name": NAME, "type": "telegram", "secret_token": "has space"})
    with pytest.raises(ValueError, match="bot_token"):
        TelegramConfig.model_validate({"name": NAME, "type": "telegram", "mode": "polling"})
    assert "123:abc" not in repr(polling_config()) + json.dumps(polling_config().model_dump(mode="json"))
