"""Kafka consumers: decode events (:mod:`consumers.codec`), apply them to the profiles,
re-classify, publish segment changes, commit."""
