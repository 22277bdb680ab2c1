"""Streams, consumers, snapshots and the embedded nats-server: the event log."""
