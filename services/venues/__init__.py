"""Real venues: their configuration (``[[venues]]``) and the ccxt exchanges built from it."""
