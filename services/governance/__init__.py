"""Governance: canary routing, promotion, capital allocation and playbooks, as pure deciders
whose decisions carry their numbers and reasons (docs/governance.md)."""
