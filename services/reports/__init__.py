"""Reports folded from the log: the daily PnL report (docs/alerts.md, "Daily report")."""
