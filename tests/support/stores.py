"""Calling a :class:`~sharedstate.server.store.Store` directly, without a socket or a process."""

from __future__ import annotations

import pickle
from typing import Any

from sharedstate.server.reservations import LocalCaller
from sharedstate.server.store import Store

# Reads don't depend on who asks; this caller holds nothing.
_READER = LocalCaller(1)


def value_of(store: Store, key: Any) -> Any:
    """The value stored under ``key``, unpickled; the key must exist."""
    data = store.lookup(_READER, key)
    assert data is not None
    return pickle.loads(data)


class RecordingJournal:
    """Records what the store journals, in order, as the journal does on disk."""

    def __init__(self) -> None:
        self.records: list[tuple[int, str, tuple[Any, ...]]] = []

    def append(self, seq: int, method: str, args: tuple[Any, ...]) -> None:
        self.records.append((seq, method, args))
