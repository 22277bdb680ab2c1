"""Execution: venues that turn order commands into execution reports."""
