"""Kafka plumbing shared by the router and the connector host. Depends only on ``models``."""
