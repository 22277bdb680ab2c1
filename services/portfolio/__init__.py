"""Portfolio: positions, cash, PnL and equity as a fold over fills and prices."""
