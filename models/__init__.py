"""Switchboard's shared language: the records on Kafka, configuration, ids and topic names.

Pure data and pure functions only: nothing in this package opens a socket, a file or reads
the environment.
"""

from models.messages import (
    INBOUND_SCHEMA,
    ROUTED_SCHEMA,
    Attachment,
    InboundMessage,
    Priority,
    RoutedMessage,
    Routing,
    Sender,
)

__all__ = [
    "INBOUND_SCHEMA",
    "ROUTED_SCHEMA",
    "Attachment",
    "InboundMessage",
    "Priority",
    "RoutedMessage",
    "Routing",
    "Sender",
]
