"""The venue gateway: the one worker per venue that talks to an exchange (docs/venues.md)."""
