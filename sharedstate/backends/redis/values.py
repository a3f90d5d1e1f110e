"""How a value is kept in Redis: its pickle, or a number as text that Redis can add to.

The clients send and expect pickles, as with the local server. Redis can't add to a
pickle, so a number (an int that fits in 64 bits, or a float) is stored as its text
(``42``, ``1.5``): ``incr`` then runs inside Redis, atomic and in one round trip
(:mod:`.scripts`). A float's text always has a ``.``, an ``e`` or is ``inf``/``nan``, so
the type comes back too. Any other value is its pickle, which starts with byte 0x80,
so the two never mix up.
"""

from __future__ import annotations

import pickle

from ...codec import PROTOCOL

PICKLE_START = 0x80
_SHORT = 32  # the pickles worth looking into: a number's is shorter
_INT64 = range(-(1 << 63), 1 << 63)


def to_redis(data: bytes) -> bytes:
    """What to store in Redis for a client's pickled value."""
    if len(data) <= _SHORT:
        try:
            value = pickle.loads(data)
        except Exception:
            return data  # the client's decode names the key when it reads it back
        if type(value) is int and value in _INT64:
            return str(value).encode()
        if type(value) is float:
            return repr(value).encode()
    return data


def from_redis(raw: bytes) -> bytes:
    """A value read from Redis, as the pickle the clients expect."""
    if not raw or raw[0] == PICKLE_START:
        return raw
    number = number_text(raw)
    return raw if number is None else pickle.dumps(number, protocol=PROTOCOL)


def number_text(raw: bytes) -> int | float | None:
    """The number a value stored as text stands for; None if it is not one."""
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        return float(raw)  # a float's text always has ".", "e" or is inf/nan: never an int's
    except ValueError:
        return None


def amount_text(amount: int | float) -> bytes:
    return (repr(amount) if type(amount) is float else str(amount)).encode()
