"""The strategy host: runs one strategy from ``strategies/`` as a worker."""
