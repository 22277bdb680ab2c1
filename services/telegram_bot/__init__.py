"""The Telegram command bot (docs/alerts.md, "Telegram bot"): an operator's phone reads the
log and flips the kill switch, through governance events that name who issued them."""
