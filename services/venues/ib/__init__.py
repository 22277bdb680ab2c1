"""Interactive Brokers through ib_async: the pure parts (contract specs, the connection's
settings, the trading calendar, bar aggregation) that the IB gateway and feed build on."""
