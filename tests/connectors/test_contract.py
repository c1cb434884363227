"""The connector contract, checked the same way for every built-in channel type.

Each channel is built through the registry with a minimal config, reached through its real
protocol by a driver (``contract_drivers.py``), and publishes through the real broker. For every
type it must hold that:

1. one customer message is exactly one record, with channel, instance and ids set;
2. the same platform message delivered twice is still one record (same ``message_id``);
3. when publishing fails the source is told to retry (SMTP 451, HTTP 503, webchat
   ``unavailable``, IMAP: the checkpoint stays before the mail), nothing is acknowledged, and
   the source's retry is then published;
4. ``stop()`` is idempotent and prompt; afterwards nothing is taken in; a second start/stop
   cycle of the same object works or fails cleanly (start raises, or nothing is taken, nothing
   acknowledged and readiness says not ready); a connector rebuilt from the same config and
   state (a restarted host) works.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from connectors.registry import BUILTIN_TYPES
from models import InboundMessage
from models.config import KafkaConfig
from models.topics import Topics
from tests.connectors.contract_drivers import DRIVERS, Answer, Rig, running
from tests.connectors.fixtures.harness import inbound

pytestmark = [pytest.mark.kafka]

STOP_WITHIN = 5.0  # seconds: "stop() returns within a few seconds"
SETTLE = 0.5  # seconds given to a stray extra publish to show up before counting
QUIET = 3.0  # seconds a stopped connector is watched for taking a message anyway

CHANNEL_TYPES = [
    pytest.param(name, marks=pytest.mark.dovecot) if name == "imap" else name for name in BUILTIN_TYPES
]


def test_every_builtin_channel_type_has_a_contract_driver() -> None:
    missing = sorted(set(BUILTIN_TYPES) - set(DRIVERS))
    assert not missing, f"channel types without a driver in tests/connectors/contract_drivers.py: {missing}"
    assert sorted(DRIVERS) == sorted(BUILTIN_TYPES), "a driver for a type the registry does not have"


@pytest.fixture(params=CHANNEL_TYPES)
async def rig(
    request: pytest.FixtureRequest, kafka_config: KafkaConfig, created_topics: Topics, tmp_path: Path
) -> AsyncIterator[Rig]:
    """A started connector of one channel type, ready for traffic."""
    driver_type = DRIVERS.get(request.param)
    if driver_type is None:
        pytest.fail(f"no contract driver for channel type {request.param!r}", pytrace=False)
    async with running(driver_type(tmp_path), kafka_config, created_topics) as channel:
        await channel.connector.start()
        await channel.ready()
        yield channel


async def records(kafka_config: KafkaConfig, topics: Topics) -> list[InboundMessage]:
    """Every record durable on this test's ``sb.inbound`` now, after a moment for stray ones."""
    await asyncio.sleep(SETTLE)
    return await inbound(kafka_config, topics.inbound)


def accepted(answer: Answer) -> None:
    assert answer.verdict == "accepted", f"the source was not told the message is stored: {answer}"


async def test_one_message_is_one_record(rig: Rig, kafka_config: KafkaConfig, created_topics: Topics) -> None:
    accepted(await rig.deliver(1))

    [record] = await records(kafka_config, created_topics)
    assert [m.message_id for m in rig.recorder.calls] == [record.message_id], "one publish per message"
    assert record.channel == rig.channel
    assert record.channel_instance == rig.name
    assert record.message_id and record.native_id
    assert (
        record.conversation_id.startswith(f"{rig.name}:") and len(record.conversation_id) > len(rig.name) + 1
    )
    assert rig.driver.token in record.text, "the record carries the customer's words"


async def test_the_same_platform_message_twice_is_one_record(
    rig: Rig, kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    first = await rig.deliver(1)
    again = await rig.deliver(1)
    accepted(first)
    accepted(again)  # a repeat is answered as stored: the platform must not keep retrying it

    [record] = await records(kafka_config, created_topics)
    assert {m.message_id for m in rig.recorder.calls} == {record.message_id}, "a repeat keeps its id"
    if rig.driver.remembers_ids:
        assert len(rig.recorder.calls) == 1, "the repeat was published again"
    else:  # email: the producer absorbs a recent repeat, consumers drop an older one by its id
        assert len(rig.recorder.calls) == 2


async def test_a_failed_publish_is_answered_retry_and_the_retry_is_published(
    rig: Rig, kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    rig.recorder.fail()
    refused = await rig.deliver(1)
    assert refused.verdict == "retry", f"the source was not told to retry: {refused}"
    assert rig.recorder.failed, "the answer came without trying the broker"
    assert not rig.recorder.confirmed
    assert await records(kafka_config, created_topics) == []

    rig.recorder.recover()
    accepted(await rig.redeliver(1))  # nothing was marked done: the retry is not a "duplicate"

    [record] = await records(kafka_config, created_topics)
    assert [m.message_id for m in rig.recorder.confirmed] == [record.message_id]
    assert {m.message_id for m in rig.recorder.failed} == {record.message_id}, "the retry keeps its id"


async def test_stop_is_idempotent_prompt_and_a_second_cycle_is_clean(
    rig: Rig, kafka_config: KafkaConfig, created_topics: Topics
) -> None:
    accepted(await rig.deliver(1))
    connector = rig.connector

    started = time.monotonic()
    await asyncio.wait_for(asyncio.gather(connector.stop(), connector.stop()), STOP_WITHIN)
    await asyncio.wait_for(connector.stop(), 1.0)
    stop_took = time.monotonic() - started
    assert stop_took < STOP_WITHIN

    calls = len(rig.recorder.calls)
    late = await rig.deliver(2, timeout=QUIET)
    assert late.verdict != "accepted", f"a stopped connector took a message: {late}"
    assert len(rig.recorder.calls) == calls, "a stopped connector published"

    # The same object again: it either works (takes a message, stops again) or fails cleanly
    # (start raises, or nothing is taken and nothing acknowledged), never hangs.
    try:
        await asyncio.wait_for(connector.start(), STOP_WITHIN)
    except TimeoutError:
        pytest.fail(f"a second start() of {rig.name} did not return within {STOP_WITHIN}s")
    except Exception:  # refusing a second start is a clean failure
        restarted = None
    else:
        restarted = await rig.deliver(3, timeout=2 * QUIET)
    if restarted is not None and restarted.verdict != "accepted":  # a refusal must be visible
        assert not rig.health.ready, f"start() returned, /readyz says ready, but the source got {restarted}"
        assert not any(rig.driver.text(3) in m.text for m in rig.recorder.confirmed), (
            f"message 3 was published but the source was told {restarted}"
        )
    await asyncio.wait_for(connector.stop(), STOP_WITHIN)

    # A restarted host builds a new connector from the same config and state: it must work.
    fresh = await rig.rebuild()
    await asyncio.wait_for(fresh.start(), STOP_WITHIN)
    await rig.ready()
    accepted(await rig.deliver(4))
    await asyncio.wait_for(fresh.stop(), STOP_WITHIN)

    published = await records(kafka_config, created_topics)
    by_id = {r.message_id for r in published}
    assert len(by_id) == len(published), "a message was published twice"
    assert {m.message_id for m in rig.recorder.confirmed} == by_id
