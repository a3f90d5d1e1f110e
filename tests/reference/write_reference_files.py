"""How the reference files beside this script were written; tests only ever read them.

Run it with the sharedstate version whose formats you want to keep readable, into an
empty directory, then check the files in here (see README.md in this directory)::

    python tests/reference/write_reference_files.py /tmp/reference

It writes, through the store, the journal and the snapshot writer of that version:

- ``writes-journal<N>.snap``: a snapshot of an ordinary state (snapshot format 1),
  three writes in;
- ``writes-journal<N>.snap.journal.000000000004``: the journal of every kind of write
  made after it, in the journal format ``<N>`` of that version (the store's operations
  are the same in every version that wrote one, so the state they make is the same);
- ``pieces-snapshot2.snap``: a snapshot of format 2, the one with values split into
  pieces. Only values over 1 GiB are split, so the limit is lowered here to a few
  hundred bytes (as tests/test_files.py does): the reader does not look at the limit;
- ``expiring-journal3.snap`` and its journal ``.journal.000000000003`` (versions with
  journal format 3 only): a snapshot with an expiring key, then a journal of every kind
  of write journal format 3 added, with fixed times;
- ``expiring-snapshot3.snap`` (versions with snapshot format 3 only): a snapshot of
  format 3, the one with keys' expiry times. The times are written as given, most far
  in the future (the year 2100) and one long past: a file keeps whatever it holds.

The expected states are written out in tests/test_reference_files.py.
"""

from __future__ import annotations

import os
import pickle
import sys
from typing import Any

from sharedstate.codec import DATA, NAMESPACE, Contents
from sharedstate.persistence import journal as journal_format
from sharedstate.persistence import snapshot as snapshot_format
from sharedstate.persistence.journal import Journal
from sharedstate.persistence.snapshot import write_snapshot
from sharedstate.server.reservations import LocalCaller
from sharedstate.server.store import Store

WRITER = LocalCaller(1)


def p(value: Any) -> bytes:
    return pickle.dumps(value, protocol=5)


def write_every_kind_of_write(path: str) -> None:
    """A snapshot three writes in, then a journal of every kind of write, seq 4 to 21."""
    store = Store()
    store.set(WRITER, "a", p(1))
    store.set(WRITER, ("t", 1), p([1, 2]))
    store.ns_set(WRITER, "mode", p("x"))
    write_snapshot(path, store.export())  # seq 3
    journal = Journal(path, "always", first_seq=4)
    store.journal = journal
    store.clear(WRITER)  # 4
    store.set(WRITER, "b", p(2))  # 5
    store.set(WRITER, "scratch", p("tmp"))  # 6
    store.delete(WRITER, "scratch")  # 7
    store.incr(WRITER, "n", 5)  # 8
    store.incr(WRITER, "n", 2.5)  # 9
    store.update(  # 10
        WRITER,
        [("cfg", p({"db": {"port": 1}})), ("names", p(["x", "y", "z"])), (("t", 1), p([1, 2]))],
    )
    store.nested(WRITER, DATA, (("t", 1),), "append", p(((3,), {})))  # 11
    store.nested(WRITER, DATA, ("cfg", "db"), "__setitem__", p((("port", 5432), {})))  # 12
    store.nested(WRITER, DATA, ("names",), "pop", p(((0,), {}, ((1, 0, "x"),))))  # 13
    store.delete_many(WRITER, ["b", "missing"])  # 14
    store.restore(WRITER, [("r", p("restored"))], [("owner", p("ops"))], False)  # 15
    store.ns_set(WRITER, "settings", p({"debug": False}))  # 16
    store.nested(  # 17
        WRITER, NAMESPACE, ("settings",), "__setitem__", p((("debug", True), {}))
    )
    store.ns_delete(WRITER, "mode")  # 18
    store.setdefault(WRITER, "d", p("default"))  # 19
    store.pop(WRITER, "d")  # 20
    store.edit_begin(WRITER, "e", p("new"), None)
    store.edit_commit(WRITER, "e", p("edited"))  # 21
    journal.close()


def write_pieces_snapshot(path: str) -> None:
    """A snapshot of format 2: a value of the dict and one of the namespace in pieces."""
    snapshot_format.LARGEST_WHOLE_VALUE = 256
    snapshot_format.CHUNK_BYTES = 100
    store = Store()
    store.set(WRITER, "small", p("s"))
    store.set(WRITER, "big", p("big " * 100))
    store.set(WRITER, ("t", 2), p(b"after"))
    store.ns_set(WRITER, "huge", p(list(range(200))))
    store.ns_set(WRITER, "mode", p("m"))
    write_snapshot(path, store.export())  # seq 5


def write_expiring_snapshot(path: str) -> None:
    """A snapshot of format 3: some keys of the dict with expiry times, one long past."""
    data = {
        "session:alice": p({"user": "alice"}),
        "session:bob": p({"user": "bob"}),
        ("rate", 1): p(3),
        "config": p({"a": 1}),  # never expires
        "stale": p("old"),
    }
    expires = {
        "session:alice": 4102444800.0,  # 2100-01-01 00:00:00 UTC
        "session:bob": 4102444800.25,
        ("rate", 1): 4133980800.5,  # 2101-01-01 00:00:00.5 UTC
        "stale": 1000000000.5,  # 2001-09-09: expired long ago, kept as written
    }
    # Contents directly: the store has no expiry operations yet.
    write_snapshot(path, Contents(7, data, {"mode": p("m")}, expires))


def write_expiring_journal(path: str) -> None:
    """A snapshot of format 3 two writes in, then a journal (format 3) of every kind of
    write that format added, seq 3 to 10, with fixed expiry times (the store's own
    methods that take a time, as replay does, instead of a ttl counted from now)."""
    store = Store()
    store._set(WRITER, "a", p(1), 4102444800.0)  # 1
    store.set(WRITER, "b", p(2))  # 2
    write_snapshot(path, store.export())  # seq 2
    journal = Journal(path, "always", first_seq=3)
    store.journal = journal
    store._set(WRITER, "s", p("session"), 4102444800.5)  # 3: set_expiring
    store._update(WRITER, [("u1", p(1)), ("u2", p(2))], 4102444801.0)  # 4: update_expiring
    store._incr(WRITER, "hits", 1, 4102444802.0)  # 5: incr_expiring, creating the key
    store._expire_at(WRITER, "b", 4102444803.0)  # 6: expire_at
    store._expire_at(WRITER, "u2", None)  # 7: persist
    store.restore(WRITER, [("r", p("r"))], [], False, [("r", 4102444804.0)])  # 8
    store._set(WRITER, "gone", p("x"), 1000000000.0)  # 9: set_expiring, long past
    store.remove_expired()  # 10: delete_many ["gone"], as the reaper writes it
    journal.close()


def main(directory: str) -> None:
    writes = os.path.join(directory, f"writes-journal{journal_format.VERSION}.snap")
    pieces = os.path.join(directory, "pieces-snapshot2.snap")
    expiring = os.path.join(directory, "expiring-snapshot3.snap")
    expiring_journal = os.path.join(directory, "expiring-journal3.snap")
    for path in (writes, pieces, expiring, expiring_journal):
        if os.path.exists(path):
            sys.exit(f"{path} exists; write into an empty directory")
    write_every_kind_of_write(writes)
    if snapshot_format.VERSION >= 3:
        write_expiring_snapshot(expiring)
    if journal_format.VERSION >= 3:
        write_expiring_journal(expiring_journal)
    write_pieces_snapshot(pieces)  # last: it lowers the snapshot writer's limits
    for name in sorted(os.listdir(directory)):
        print(os.path.join(directory, name))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} DIRECTORY")
    main(sys.argv[1])
