"""Where each part of the state lives in Redis: key names under the app's prefix.

Every name starts with ``SHAREDSTATE_PREFIX`` (default ``sharedstate:``), so apps
sharing one Redis never meet, and ``clear()``, ``keys()`` and ``dump`` can find exactly
this app's keys with one SCAN pattern:

==========================  ===========================================================
``<prefix>k:<key>``         a key of the dict
``<prefix>n:<name>``        an attribute of the namespace
``<prefix>lock``            the lock: the holder's token, with a lease
``<prefix>e:<key>``         an edit of a key in progress: the editor's token, with a lease
``<prefix>woken:<what>``    a list a release pushes to, to wake one waiter at once
==========================  ===========================================================

A key is written so that it reads back as the same Python key: ``s:`` and the text for
a str (most keys, readable in ``redis-cli``), ``b:`` and the bytes, ``i:`` and the
digits for an int, and ``p:`` and a pickle for the rest (floats, None, tuples). Keys
that are equal in a dict are one key here too: ``True`` and ``1.0`` are stored as ``1``
(and come back from ``keys()`` as ``1``).
"""

from __future__ import annotations

import io
import math
import pickle
from typing import Any

from ...errors import WrongType

_KEY_PROTOCOL = 4  # fixed: the same key must always have the same name


class Names:
    """The Redis key names of one app's state, from its prefix."""

    __slots__ = ("_data", "_namespace", "data_pattern", "lock", "namespace_pattern", "prefix")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.encode()
        self._data = self.prefix + b"k:"
        self._namespace = self.prefix + b"n:"
        self.lock = self.prefix + b"lock"
        glob = _glob_escaped(self.prefix)
        self.data_pattern = glob + b"k:*"
        self.namespace_pattern = glob + b"n:*"

    def key(self, key: Any) -> bytes:
        if type(key) is str:  # most keys: the short way
            return self._data + b"s:" + key.encode("utf-8", "surrogatepass")
        return self._data + _key_suffix(key)

    def key_of(self, name: bytes) -> Any:
        """The Python key stored under ``name`` (a name :meth:`key` made)."""
        try:
            return _key_from_suffix(name[len(self._data) :])
        except Exception:
            raise WrongType(
                f"Redis holds a key {name!r} under this app's prefix that sharedstate did "
                "not write; another program uses the same prefix: give this app its own "
                "with SHAREDSTATE_PREFIX"
            ) from None

    def attribute(self, name: str) -> bytes:
        return self._namespace + name.encode("utf-8", "surrogatepass")

    def attribute_of(self, name: bytes) -> str:
        return name[len(self._namespace) :].decode("utf-8", "surrogatepass")

    def edit(self, key: Any) -> bytes:
        return self.prefix + b"e:" + _key_suffix(key)

    def woken(self, held: bytes) -> bytes:
        """The list that wakes a waiter for ``held`` (the lock's or an edit's name)."""
        return self.prefix + b"woken:" + held[len(self.prefix) :]


def _key_suffix(key: Any) -> bytes:
    key = _canonical(key)
    if isinstance(key, str):
        return b"s:" + key.encode("utf-8", "surrogatepass")
    if isinstance(key, bytes):
        return b"b:" + key
    if isinstance(key, int):
        return b"i:" + str(key).encode()
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, _KEY_PROTOCOL)
    pickler.fast = True  # no memo: equal keys pickle to equal bytes
    pickler.dump(key)
    return b"p:" + buffer.getvalue()


def _key_from_suffix(suffix: bytes) -> Any:
    tag, body = suffix[:2], suffix[2:]
    if tag == b"s:":
        return body.decode("utf-8", "surrogatepass")
    if tag == b"b:":
        return body
    if tag == b"i:":
        return int(body)
    return pickle.loads(body)


def _canonical(key: Any) -> Any:
    """The one form of keys a dict takes as equal: ``True``, ``1`` and ``1.0`` are ``1``."""
    kind = type(key)
    if kind is bool:
        return int(key)
    if kind is float and math.isfinite(key) and key.is_integer():
        return int(key)
    if kind is tuple:
        return tuple(_canonical(part) for part in key)
    return key


def _glob_escaped(text: bytes) -> bytes:
    """``text`` matched literally in a SCAN pattern."""
    special = b"*?[]\\"
    return b"".join(b"\\" + bytes([c]) if c in special else bytes([c]) for c in text)
