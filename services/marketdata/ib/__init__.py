"""The Interactive Brokers marketdata worker (docs/venues.md, IB section)."""
