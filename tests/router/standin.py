"""A stand-in decider for the routing service tests, and inbound records to feed it.

It routes by markers in the text, so each test states the decision it wants:
``dept=billing`` (department), ``conf=0.2`` (confidence, default 0.9), ``escalate``,
``autoreply`` (dropped), ``boom`` (the classifier raises on this message). A message without a
``dept=`` marker follows its conversation's department (affinity), else goes to ``general``.
``reasons`` records the context it was given: ``ctx:<department>:<messages_seen>:<unresolved>``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from models import InboundMessage, Routing, Sender
from models.ids import message_id
from router.pipeline import ConversationContext, Decision

__all__ = ["StandInDecider", "inbound"]

_MARKER = re.compile(r"\b(dept|conf)=(\S+)")


class StandInDecider:
    def __init__(self, *, delay_per_batch: float = 0.0) -> None:
        self.delay_per_batch = delay_per_batch
        self.batches = 0

    def decide_batch(
        self, messages: Sequence[InboundMessage], context: Sequence[ConversationContext]
    ) -> list[Decision]:
        self.batches += 1
        if self.delay_per_batch:
            time.sleep(self.delay_per_batch)  # stands for CPU-heavy classification
        return [self._decide(m, c) for m, c in zip(messages, context, strict=True)]

    def _decide(self, message: InboundMessage, context: ConversationContext) -> Decision:
        if "boom" in message.text:
            raise ValueError("the stand-in classifier cannot read this message")
        markers = dict(_MARKER.findall(message.text))
        department = markers.get("dept") or context.department or "general"
        routing = Routing(
            department=department,
            confidence=float(markers.get("conf", "0.9")),
            language="en",
            escalate="escalate" in message.text,
            reasons=(f"ctx:{context.department}:{context.messages_seen}:{context.unresolved}",),
            model="stand-in",
            routed_at=datetime.now(UTC),
        )
        return Decision(routing=routing, drop="autoreply" in message.text)


def inbound(
    n: int, text: str, *, conversation: str | None = None, instance: str = "test-mail"
) -> InboundMessage:
    """The *n*-th test message; by default message n belongs to conversation n mod 100."""
    native = f"<{n}@test.example>"
    return InboundMessage(
        message_id=message_id(instance, native),
        channel="email",
        channel_instance=instance,
        native_id=native,
        received_at=datetime.now(UTC),
        sender=Sender(id=f"customer{n % 50}@example.org"),
        conversation_id=f"{instance}:{conversation if conversation is not None else n % 100}",
        subject=f"message {n}",
        text=text,
        body=text,
    )
