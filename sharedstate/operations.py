"""The store operations clients may call, by kind. Client and server both read this table.

- reads change nothing: a read cut off by a dropped connection is simply sent again;
- writes are numbered per client session and journaled: a write cut off in flight is
  sent again with its number, and the server applies it at most once
  (:mod:`sharedstate.server.sessions`);
- the lock and edits belong to a connection: when it drops, the server frees them, and
  the client's thread learns it lost them (:class:`~sharedstate.errors.LockLost`) instead
  of going on as if it still held them. These calls are never sent again.
"""

from __future__ import annotations

READS = frozenset(
    {"lookup", "contains", "length", "keys", "items", "values", "copy", "get_many",
     "ns_lookup", "ns_items", "export_all", "lock_locked"}
)  # fmt: skip
WRITES = frozenset(
    {"set", "delete", "setdefault", "pop", "update", "clear", "incr", "nested",
     "ns_set", "ns_delete", "restore", "delete_many"}
)  # fmt: skip
RESERVATIONS = frozenset(
    {"lock_acquire", "lock_release", "edit_begin", "edit_commit", "edit_abort"}
)  # fmt: skip
ALL = READS | WRITES | RESERVATIONS
