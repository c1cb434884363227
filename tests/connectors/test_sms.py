"""The Twilio SMS channel over real HTTP, records read back from the broker."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest

from connectors.signatures import sign_twilio
from connectors.sms import EMPTY_TWIML, SmsConfig, SmsConnector
from models.config import KafkaConfig
from models.ids import message_id
from models.topics import Topics
from tests.connectors.fixtures.harness import (
    Live,
    by_native_id,
    fixture_bytes,
    inbound,
    live_channel,
)

NAME = "support-sms"
PATH = f"/channels/{NAME}/"
TOKEN = "9f3c2b1a0d8e7f6a5b4c3d2e1f0a9b8c"
ACCOUNT = "AC6f2b5c1e9d8a7b3c4d5e6f708192a3b4"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def live(kafka_config: KafkaConfig, topics: Topics, **overrides: Any) -> AbstractAsyncContextManager[Live]:
    config = SmsConfig.model_validate({"name": NAME, "type": "sms", "auth_token": TOKEN, **overrides})
    return live_channel(kafka_config, topics, NAME, "sms", lambda context: SmsConnector(config, context))


async def post(
    client: httpx.AsyncClient,
    body: bytes,
    *,
    signed_url: str | None = None,
    token: str = TOKEN,
    query: str = "",
) -> httpx.Response:
    """POST *body* as Twilio would, signed for *signed_url* (default: the URL actually called)."""
    url = str(client.base_url).rstrip("/") + PATH + (f"?{query}" if query else "")
    signature = sign_twilio(token, signed_url or url, parse_qsl(body.decode(), keep_blank_values=True))
    return await client.post(url, content=body, headers={**FORM, "X-Twilio-Signature": signature})


async def test_sms_becomes_a_record_and_gets_empty_twiml(
    kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    async with live(kafka_config, created_topics) as channel:
        answer = await post(channel.client, fixture_bytes("sms_inbound.form"))
    assert answer.status_code == 200
    assert answer.text == EMPTY_TWIML and answer.headers["content-type"].startswith("text/xml")
    [record] = await inbound(kafka_config, created_topics.inbound)
    assert record.message_id == message_id(NAME, "SM1f0e9d8c7b6a5f4e3d2c1b0a99887766")
    assert (record.channel, record.native_id) == ("sms", "SM1f0e9d8c7b6a5f4e3d2c1b0a99887766")
    assert record.sender.id == "+12125550199" and record.recipients == ("+14155550100",)
    assert record.conversation_id == f"{NAME}:+14155550100:+12125550199"
    assert record.text == "Hi, I was charged twice for order 7781. Can you refund one?"
    assert record.attachments == ()
    assert record.metadata["sms"] == {
        "account_sid": ACCOUNT,
        "num_segments": 1,
        "messaging_service_sid": "MG9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d",
        "FromCountry": "US",
        "FromState": "NY",
        "FromCity": "NEW YORK",
        "FromZip": "10001",
    }


async def test_mms_media_are_attachment_metadata(kafka_config: KafkaConfig, created_topics: Topics) -> None:
    async with live(kafka_config, created_topics) as channel:
        answer = await post(channel.client, fixture_bytes("sms_mms.form"))
    assert answer.status_code == 200, answer.text
    [record] = await inbound(kafka_config, created_topics.inbound)
    assert [(a.content_type, a.ref.rsplit("/", 1)[-1]) for a in record.attachments if a.ref] == [
        ("image/jpeg", "ME0a1b2c3d4e5f60718293a4b5c6d7e8f9"),
        ("application/pdf", "ME1b2c3d4e5f60718293a4b5c6d7e8f9a0"),
    ]
    assert record.sender.id == "+919812345678"


async def test_bare_channel_root_is_signed_as_registered(
    kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    body = fixture_bytes("sms_inbound.form")
    async with live(kafka_config, created_topics) as channel:
        url = str(channel.client.base_url).rstrip("/") + PATH.rstrip("/")  # registered without "/"
        signature = sign_twilio(TOKEN, url, parse_qsl(body.decode(), keep_blank_values=True))
        answer = await channel.client.post(
            url, content=body, headers={**FORM, "X-Twilio-Signature": signature}
        )
    assert answer.status_code == 200, answer.text
    assert len(await inbound(kafka_config, created_topics.inbound)) == 1


async def test_behind_a_proxy_the_public_url_is_what_is_signed(
    kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    public = "https://sms.example.com/hooks/twilio"
    body = fixture_bytes("sms_inbound.form")
    async with live(kafka_config, created_topics, public_url=public) as channel:
        as_seen = await post(channel.client, body)  # signed for the internal URL: not what Twilio signs
        as_public = await post(channel.client, body, signed_url=f"{public}?tenant=7", query="tenant=7")
    assert as_seen.status_code == 401
    assert as_public.status_code == 200
    assert len(await inbound(kafka_config, created_topics.inbound)) == 1


@pytest.mark.parametrize("case", ["wrong token", "missing", "tampered"])
async def test_bad_signature_is_401(kafka_config: KafkaConfig, created_topics: Topics, case: str) -> None:
    body = fixture_bytes("sms_inbound.form")
    async with live(kafka_config, created_topics) as channel:
        if case == "wrong token":
            answer = await post(channel.client, body, token="0" * 32)
        elif case == "missing":
            answer = await channel.client.post(PATH, content=body, headers=FORM)
        else:
            url = str(channel.client.base_url).rstrip("/") + PATH
            signature = sign_twilio(TOKEN, url, parse_qsl(body.decode()))
            forged = body.replace(b"refund+one", b"refund+both")
            answer = await channel.client.post(
                url, content=forged, headers={**FORM, "X-Twilio-Signature": signature}
            )
        assert channel.gate.attempts == 0
    assert answer.status_code == 401
    assert await inbound(kafka_config, created_topics.inbound) == []


async def test_retries_and_broker_outage_give_exactly_one_record(
    kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    body = fixture_bytes("sms_inbound.form")
    async with live(kafka_config, created_topics) as channel:
        channel.gate.close()
        down = await post(channel.client, body)
        channel.gate.open()
        up = [await post(channel.client, body) for _ in range(3)]
    assert down.status_code == 503 and "Retry-After" in down.headers
    assert [a.status_code for a in up] == [200, 200, 200]
    assert {a.text for a in up} == {EMPTY_TWIML}
    records = by_native_id(await inbound(kafka_config, created_topics.inbound))
    assert {k: len(v) for k, v in records.items()} == {"SM1f0e9d8c7b6a5f4e3d2c1b0a99887766": 1}


async def test_bad_requests(kafka_config: KafkaConfig, created_topics: Topics) -> None:
    fields = dict(parse_qsl(fixture_bytes("sms_inbound.form").decode()))
    without_from = urlencode({k: v for k, v in fields.items() if k != "From"}).encode()
    too_many_media = urlencode({**fields, "NumMedia": "11"}).encode()
    async with live(kafka_config, created_topics) as channel:
        json_body = await channel.client.post(PATH, json=fields)
        missing = await post(channel.client, without_from)
        media = await post(channel.client, too_many_media)
    assert json_body.status_code == 400 and "x-www-form-urlencoded" in json_body.json()["detail"]
    assert missing.status_code == 400 and missing.json()["detail"] == "From: Field required"
    assert media.status_code == 400 and "NumMedia" in media.json()["detail"]


async def test_other_account_is_403(kafka_config: KafkaConfig, created_topics: Topics) -> None:
    async with live(kafka_config, created_topics, account_sid="AC" + "0" * 32) as channel:
        answer = await post(channel.client, fixture_bytes("sms_inbound.form"))
    assert answer.status_code == 403 and answer.json()["error"] == "wrong_account"


def test_public_url_must_be_absolute_without_fragment() -> None:
    for bad in ("/channels/sms/", "https://x.example/p#rc=5", "https://x.example/p?x=1"):
        with pytest.raises(ValueError, match="public_url"):
            SmsConfig.model_validate({"name": NAME, "type": "sms", "auth_token": TOKEN, "public_url": bad})
