"""Live market data from an exchange through ccxt: pure decisions, and the adapter that feeds them."""
