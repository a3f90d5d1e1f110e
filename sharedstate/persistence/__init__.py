"""Snapshots and the journal: how the server's state survives restarts and crashes."""
