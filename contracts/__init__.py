"""Typed events, envelopes and subject names shared by every Keel worker."""
