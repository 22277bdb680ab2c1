"""Keel's workers and the runtime that connects their pure decision logic to the log."""
