"""``switchboard demo``: a few customer messages in several languages, through the real pipeline.

Mails go to the configured SMTP channel like any sender's would; the demo then watches the
department queues and prints where each message went.
"""

from __future__ import annotations

import asyncio
import smtplib
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from typing import TextIO

from aiokafka import AIOKafkaConsumer

from bus.admin import partitions_of
from bus.options import client_options
from models import RoutedMessage
from models.config import Settings
from models.topics import Topics

__all__ = ["SAMPLES", "run_demo"]


@dataclass(frozen=True)
class Sample:
    sender: str
    subject: str
    text: str


SAMPLES = (
    Sample(
        "kumar@example.org",
        "Parcel not delivered",
        "My parcel with tracking 8812 was due on Monday and still has not arrived. Where is it?",
    ),
    Sample(
        "lucia@example.es",
        "Cargo duplicado",
        "Hola, me han cobrado dos veces el pedido 4471 en la tarjeta. ¿Pueden devolverme uno de los cargos?",
    ),
    Sample("priya@example.in", "", "मुझे यह जूता वापस करना है, साइज़ छोटा है। रिटर्न पिकअप कैसे बुक करूँ?"),
    Sample("rahul@example.in", "", "bhai mera order cancel karna hai, galti se do baar place ho gaya"),
    Sample("meena@example.in", "", "என் பார்சல் இன்னும் வரவில்லை, டிராக்கிங் நம்பர் வேலை செய்யவில்லை"),
    Sample("arif@example.com.bd", "", "আমার কার্ড থেকে দুইবার টাকা কেটে নিয়েছে, বিলটা একটু দেখবেন?"),
    Sample("joy@example.ph", "", "Hi po, hindi ako makalogin sa app, laging error yung OTP"),
    Sample(
        "angry@example.com",
        "UNACCEPTABLE",
        "This is the third time I am writing. Nobody answers. I want to speak to a supervisor NOW or I am cancelling my account.",
    ),
)


def _send_mail(host: str, port: int, domain: str, sample: Sample, message_id: str) -> None:
    mail = EmailMessage()
    mail["From"] = sample.sender
    mail["To"] = f"support@{domain}"
    mail["Subject"] = sample.subject
    mail["Message-ID"] = message_id
    mail.set_content(sample.text)
    with smtplib.SMTP(host, port, timeout=30) as client:
        client.send_message(mail)


async def run_demo(settings: Settings, *, timeout: float, out: TextIO) -> bool:
    """Send the samples, print where each went; False when not all arrived in *timeout*."""
    smtp = next((c for c in settings.channels if c.type == "smtp"), None)
    if smtp is None or smtp.listen is None:
        out.write("the demo needs an smtp channel in the configuration\n")
        return False
    domains = getattr(smtp, "domains", None) or ["example.com"]
    bootstrap = settings.kafka.bootstrap or "127.0.0.1:9092"
    kafka = settings.kafka.model_copy(update={"bootstrap": bootstrap})
    topics = Topics(kafka.topic_prefix)
    queues = [topics.department(d) for d in settings.router.departments] + [topics.triage]

    consumer = AIOKafkaConsumer(**client_options(kafka), group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = await partitions_of(kafka, queues)
        if not partitions:
            out.write(f"no queues found on {bootstrap}: is `switchboard up` running?\n")
            return False
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        run = uuid.uuid4().hex[:8]
        pending: dict[str, Sample] = {}
        for index, sample in enumerate(SAMPLES):
            message_id = f"<demo-{run}-{index}@switchboard.local>"
            await asyncio.to_thread(
                _send_mail, smtp.listen.host, smtp.listen.port, domains[0], sample, message_id
            )
            pending[message_id] = sample
        out.write(f"sent {len(pending)} messages to smtp://{smtp.listen}; waiting for the router…\n\n")
        out.write(f"{'queue':22} {'lang':5} {'priority':8} {'esc':4} message\n")
        deadline = asyncio.get_running_loop().time() + timeout
        while pending and asyncio.get_running_loop().time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    routed = RoutedMessage.from_json_bytes(record.value)
                    if routed.native_id not in pending:
                        continue  # someone else's message
                    sample = pending.pop(routed.native_id)
                    r = routed.routing
                    snippet = " ".join(sample.text.split())[:60]
                    out.write(
                        f"{record.topic:22} {r.language:5} {r.priority:8} {'yes' if r.escalate else 'no':4} {snippet}\n"
                    )
                    out.flush()
        if pending:
            out.write(f"\n{len(pending)} message(s) not routed within {timeout:g}s\n")
            return False
        return True
    finally:
        await consumer.stop()
