"""Journal records: what each write did, in an on-disk format of its own.

A record is the plain tuple ``(seq, kind, fields)``: the write's number, the name of
its *kind*, and a tuple of fields laid out as :data:`KINDS` says. It is pickled into a
frame (:mod:`sharedstate.persistence.frames`) and read back with an unpickler that
refuses every class, so fields are plain data: str, bytes, numbers, bools, None, tuples
and lists of those (and slices, inside nested paths). Values are the pickles the
clients sent, as bytes, never unpickled to read the journal.

The store emits a record per write (:meth:`sharedstate.server.store.Store._record`), and
replays one through its table of kinds (:data:`sharedstate.server.store.APPLY`): the
method signatures of the store are not part of the format.

Format version 3, the one written (version 2 without the ``*_expiring``, ``expire_at``
and ``persist`` kinds)::

    kind         fields                          what replaying it does
    set          (key, value)                    state[key] = the pickled value
    delete       (key,)                          remove key, if there
    incr         (key, amount)                   add an int or float (missing counts as 0)
    nested       (space, path, method, call)     call a dict or list method in a value
    update       (pairs,)                        set each (key, value) of a list
    delete_many  (keys,)                         remove each key of a list, if there
    clear        ()                              remove every key (the namespace stays)
    restore      (pairs, attributes, replace)    load a dump; replace: empty both first
    ns_set       (name, value)                   set a namespace attribute
    ns_delete    (name,)                         remove a namespace attribute
    set_expiring (key, value, expires_at)        set, expiring at a wall-clock time
    update_expiring (pairs, expires_at)          update, every key expiring then
    incr_expiring (key, amount, expires_at)      incr; a key it creates expires then
    expire_at    (key, expires_at)               make a stored key expire then
    persist      (key,)                          make a stored key never expire
    restore_expiring (pairs, attributes, replace, expires)
                                                 restore, then set each (key, time)

A key whose time has passed is removed by a ``delete`` or ``delete_many`` record, written
when the server removed it (on a write that needed to, by the background reaper, or to
make room under the memory bound): replaying lets no time pass, so the journal alone
says what expired before each write. Keys whose time passed while the server was down
are hidden from the moment it starts.

``space`` is ``"data"`` or ``"namespace"``; ``path`` a tuple, the key of the value
first, then the steps into it; ``method`` a method of :mod:`sharedstate.nested`;
``call`` the pickle of ``(args, kwargs)`` or ``(args, kwargs, expectations)``;
``attributes`` a list of (name, value) pairs.

Format version 1 (sharedstate 0.1) wrote ``(seq, method, args)``: the name of the store
method that made the write, and its arguments after the caller. Each is read as a record
of the kind of the same name, whose fields are those arguments, except ``setdefault``
(journaled only when it set the key) and ``pop`` (only when it removed one), read as
``set`` and ``delete`` (:func:`upgrade`).

How a format change stays readable:

- Never change the fields of a kind in place. A write that needs more (say, a key with
  an expiry time) gets a new kind (``set_expiring (key, value, expires_at)``); a kind
  nobody writes any more stays readable.
- When the writer starts writing something an older reader would misread or refuse,
  bump :data:`VERSION` (the journal's preamble carries it), so that older sharedstate
  says which version it found instead of failing on a record.
- Keep reading every older version: add it to :data:`READABLE_VERSIONS` and translate its
  records into today's kinds in :func:`upgrade`.
- Check in a file written by each version under ``tests/reference/`` (with how it was
  made) and a test that today's code loads it to the exact expected state. Snapshot
  files follow the same rules (:mod:`sharedstate.persistence.snapshot`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..codec import DATA, NAMESPACE, is_plain_key
from ..errors import CorruptFile
from .frames import dump_plain, load_plain

VERSION = 3  # written; the version in the journal's preamble
READABLE_VERSIONS = (1, 2, 3)

SET = "set"
DELETE = "delete"
INCR = "incr"
NESTED = "nested"
UPDATE = "update"
DELETE_MANY = "delete_many"
CLEAR = "clear"
RESTORE = "restore"
NS_SET = "ns_set"
NS_DELETE = "ns_delete"
SET_EXPIRING = "set_expiring"
UPDATE_EXPIRING = "update_expiring"
INCR_EXPIRING = "incr_expiring"
EXPIRE_AT = "expire_at"
PERSIST = "persist"
RESTORE_EXPIRING = "restore_expiring"


@dataclass(frozen=True)
class Kind:
    """A record kind: its name on disk and the names of its fields, in order."""

    name: str
    fields: tuple[str, ...]


def _table(*kinds: Kind) -> dict[str, Kind]:
    return {kind.name: kind for kind in kinds}


KINDS = _table(
    Kind(SET, ("key", "value")),
    Kind(DELETE, ("key",)),
    Kind(INCR, ("key", "amount")),
    Kind(NESTED, ("space", "path", "method", "call")),
    Kind(UPDATE, ("pairs",)),
    Kind(DELETE_MANY, ("keys",)),
    Kind(CLEAR, ()),
    Kind(RESTORE, ("pairs", "attributes", "replace")),
    Kind(NS_SET, ("name", "value")),
    Kind(NS_DELETE, ("name",)),
    Kind(SET_EXPIRING, ("key", "value", "expires_at")),
    Kind(UPDATE_EXPIRING, ("pairs", "expires_at")),
    Kind(INCR_EXPIRING, ("key", "amount", "expires_at")),
    Kind(EXPIRE_AT, ("key", "expires_at")),
    Kind(PERSIST, ("key",)),
    Kind(RESTORE_EXPIRING, ("pairs", "attributes", "replace", "expires")),
)

# Version 1 named store methods; the kind each one's arguments are the fields of.
_FROM_VERSION_1 = {
    "set": SET,
    "setdefault": SET,  # journaled only when the key was missing, so it set it
    "delete": DELETE,
    "pop": DELETE,  # journaled only when the key was there, so it removed it
    "incr": INCR,
    "nested": NESTED,
    "update": UPDATE,
    "delete_many": DELETE_MANY,
    "clear": CLEAR,
    "restore": RESTORE,
    "ns_set": NS_SET,
    "ns_delete": NS_DELETE,
}


def dump(seq: int, kind: str, fields: tuple[Any, ...]) -> bytes:
    """The payload of a record's frame."""
    return dump_plain((seq, kind, fields))


def load(payload: bytes, version: int, path: str, offset: int) -> tuple[int, str, tuple[Any, ...]]:
    """``(seq, kind, fields)`` from a frame of a journal of format ``version``.

    Records of older versions come back as today's kinds. A record that is not a
    ``(seq, name, fields)`` tuple raises :class:`CorruptFile`; its kind and fields are
    checked by :func:`problem`, before it is applied.
    """
    record = load_plain(payload, path, offset)
    if type(record) is tuple and len(record) == 3:
        seq, name, fields = record
        if type(seq) is int and type(name) is str and type(fields) is tuple:
            return (seq, *upgrade(version, name, fields))
    raise CorruptFile(f"{path}: unexpected record at byte {offset}", path=path, offset=offset)


def upgrade(version: int, name: str, fields: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
    """A record of format ``version`` as a record of today's kinds.

    A name no version knows is kept, for :func:`problem` to refuse.
    """
    if version == 1:
        return _FROM_VERSION_1.get(name, name), fields
    return name, fields


def problem(kind: str, fields: tuple[Any, ...]) -> str | None:
    """What is wrong with a record of ``kind``, for a message; None if it can be applied."""
    layout = KINDS.get(kind)
    if layout is None:
        return f"names an unknown operation {kind!r} (a newer sharedstate may have written it)"
    if len(fields) != len(layout.fields) or not all(
        _FIELD_CHECKS[name](value) for name, value in zip(layout.fields, fields, strict=True)
    ):
        return f"is not a {kind} record of fields ({', '.join(layout.fields)})"
    return None


# -- what each field may hold ----------------------------------------------------------


def _is_key(value: Any) -> bool:
    return is_plain_key(value)  # what clients may send, and what a journal can hold


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _is_path(value: Any) -> bool:
    return type(value) is tuple and len(value) > 0 and _is_key(value[0])


def _is_sequence(value: Any) -> bool:
    return type(value) in (list, tuple)


def _is_pairs(value: Any) -> bool:
    return _is_sequence(value) and all(
        _is_sequence(pair) and len(pair) == 2 and _is_key(pair[0]) and type(pair[1]) is bytes
        for pair in value
    )


def _is_time(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _is_deadlines(value: Any) -> bool:
    return _is_sequence(value) and all(
        _is_sequence(pair) and len(pair) == 2 and _is_key(pair[0]) and _is_time(pair[1])
        for pair in value
    )


def _is_attributes(value: Any) -> bool:
    return _is_pairs(value) and all(type(name) is str for name, _ in value)


_FIELD_CHECKS: dict[str, Callable[[Any], bool]] = {
    "key": _is_key,
    "value": lambda value: type(value) is bytes,
    "amount": _is_number,
    "space": lambda value: value in (DATA, NAMESPACE),
    "path": _is_path,
    "method": lambda value: type(value) is str,
    "call": lambda value: type(value) is bytes,
    "pairs": _is_pairs,
    "keys": lambda value: _is_sequence(value) and all(map(_is_key, value)),
    "attributes": _is_attributes,
    "replace": lambda value: type(value) is bool,
    "name": lambda value: type(value) is str,
    "expires_at": _is_time,
    "expires": _is_deadlines,
}
