"""Pure strategy logic: bars in, signals out, no I/O."""
