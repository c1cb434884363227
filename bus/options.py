"""aiokafka client options derived from :class:`models.config.KafkaConfig`."""

from __future__ import annotations

from typing import Any

from aiokafka.helpers import create_ssl_context

from models.config import KafkaConfig

__all__ = ["EMBEDDED_DEFAULT", "client_options"]

EMBEDDED_DEFAULT = "127.0.0.1:9092"


def client_options(config: KafkaConfig) -> dict[str, Any]:
    """Connection, security and timeout options shared by producers, consumers and admin."""
    options: dict[str, Any] = {
        "bootstrap_servers": config.bootstrap or EMBEDDED_DEFAULT,
        "client_id": config.client_id,
        "request_timeout_ms": config.request_timeout_ms,
        "security_protocol": config.security_protocol,
    }
    if config.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=config.ssl_cafile,
            certfile=config.ssl_certfile,
            keyfile=config.ssl_keyfile,
            password=config.ssl_password.get_secret_value() if config.ssl_password else None,
        )
    if config.sasl_mechanism:
        options["sasl_mechanism"] = config.sasl_mechanism
        options["sasl_plain_username"] = config.sasl_plain_username
        if config.sasl_plain_password is not None:
            options["sasl_plain_password"] = config.sasl_plain_password.get_secret_value()
    return options
