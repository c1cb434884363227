"""Structured JSON logs on stderr, with secrets scrubbed as a last line of defence.

Secrets are ``SecretStr`` everywhere, so they print as ``**********``; the scrubber also masks
any value logged under a key that names a secret, in case a plain string slips through.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = ["configure_logging"]

_SECRET_WORDS = ("password", "secret", "token", "authorization", "api_key", "signature")


def _scrub_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if any(word in key.lower() for word in _SECRET_WORDS):
            event[key] = "**********"
    return event


def configure_logging(level: str = "info", *, json: bool = True) -> None:
    """Route structlog and the standard library (aiokafka, uvicorn) through one JSON renderer."""
    numeric = logging.getLevelName(level.upper())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _scrub_secrets,
    ]
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # aiokafka logs every reconnect attempt at ERROR while a broker is down; our own
    # readiness and publish errors already say so once, clearly.
    logging.getLogger("aiokafka").setLevel(
        max(numeric, logging.CRITICAL if numeric > logging.DEBUG else numeric)
    )
    logging.getLogger("uvicorn.access").setLevel(max(numeric, logging.WARNING))
