"""Worker runtime: consumers, snapshots, heartbeats, metrics, signals."""
