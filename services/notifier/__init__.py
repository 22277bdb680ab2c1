"""The notifier: alerts from the log to people, through Apprise (docs/alerts.md)."""
