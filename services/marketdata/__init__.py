"""Market data: reading bar files, a synthetic market, and publishing bars into the log."""
