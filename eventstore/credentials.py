"""Who a connection to NATS authenticates as, read from the environment, never printed.

- ``KEEL_NATS_USER`` with ``KEEL_NATS_PASSWORD`` (or ``KEEL_NATS_PASSWORD_FILE``, a file
  holding it, e.g. a Docker secret): the users of the repository's ``nats.conf``;
- ``KEEL_NATS_CREDS``: a creds file, for servers in operator (JWT) mode (needs ``nkeys``).

Nothing set: no credentials, which is what the embedded server (no users) expects. URLs are
printed through ``redact_url`` so a ``user:password@`` in ``KEEL_NATS_URL`` never shows.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from eventstore.errors import KeelError

USER_ENV = "KEEL_NATS_USER"
PASSWORD_ENV = "KEEL_NATS_PASSWORD"
PASSWORD_FILE_ENV = "KEEL_NATS_PASSWORD_FILE"
CREDS_ENV = "KEEL_NATS_CREDS"

log = logging.getLogger("keel.bus")

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<info>[^/\s,]+)@")


def redact_url(url: str) -> str:
    """``nats://risk:secret@host:4222`` -> ``nats://risk:***@host:4222`` (a token alone: ``***``)."""

    def mask(m: re.Match[str]) -> str:
        user, colon, _ = m["info"].partition(":")
        return f"{m['scheme']}{user}:***@" if colon else f"{m['scheme']}***@"

    return _USERINFO.sub(mask, url)


@dataclass(frozen=True)
class Credentials:
    """Who a connection authenticates as. The password is kept out of ``repr``."""

    user: str = ""
    password: str = field(default="", repr=False)
    creds_file: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Credentials:
        env = os.environ if env is None else env
        user, password = env.get(USER_ENV, ""), env.get(PASSWORD_ENV, "")
        password_file, creds_file = env.get(PASSWORD_FILE_ENV, ""), env.get(CREDS_ENV, "")
        if password and password_file:
            raise KeelError(f"set {PASSWORD_ENV} or {PASSWORD_FILE_ENV}, not both")
        if password_file:
            try:
                password = Path(password_file).read_text().strip()
            except OSError as exc:
                raise KeelError(
                    f"{PASSWORD_FILE_ENV}: cannot read {password_file}: {exc.strerror}"
                ) from None
        if password and not user:
            raise KeelError(f"a NATS password is set but {USER_ENV} is not")
        if creds_file and user:
            raise KeelError(f"set {USER_ENV} or {CREDS_ENV}, not both")
        if creds_file and not Path(creds_file).is_file():
            raise KeelError(f"{CREDS_ENV}: no such file {creds_file}")
        return cls(user, password, creds_file)

    def options(self) -> dict[str, str]:
        """Keyword arguments for ``nats.connect``."""
        if self.creds_file:
            return {"user_credentials": self.creds_file}
        return {"user": self.user, "password": self.password} if self.user else {}

    def describe(self) -> str:
        if self.creds_file:
            return f"the credentials in {self.creds_file}"
        return f"user {self.user!r}" if self.user else "a connection without credentials"


class Refusals:
    """What the server refused on one connection (permission and authorization violations),
    each logged once, so a call that timed out on a refused subject can say why."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def record(self, exc: Exception) -> None:
        text = str(exc)
        lowered = text.lower()
        if "violation" in lowered and text not in self.seen:
            self.seen = [*self.seen[-99:], text]
            # Into a worker's log; a command without logging set up says it in its error.
            if "permissions violation" in lowered and logging.getLogger().hasHandlers():
                log.warning("NATS refused: %s", text.removeprefix("nats: "))

    def about(self, needle: str) -> str | None:
        """The latest refusal mentioning ``needle`` (nats-py lower-cases the server's text)."""
        return next((t for t in reversed(self.seen) if needle.lower() in t.lower()), None)
