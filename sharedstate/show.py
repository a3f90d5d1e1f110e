"""How the CLI shows a stored value: as JSON, in Python's notation, or by its type.

The CLI runs outside the app, so it may not be able to import the classes of what it
shows; it then says what the value is and how to see it (``--format repr`` with
stand-ins, see :mod:`sharedstate.standins`) instead of only failing.
"""

from __future__ import annotations

import json
import pickle
from typing import Any

from .errors import ValueNotLoadable, WrongType
from .persistence.dumpfile import check_plain_json
from .standins import load_with_stand_ins, type_name

# auto: JSON when JSON holds the value exactly, else Python's notation.
FORMATS = ("auto", "json", "repr", "type", "pickle")


def show(data: bytes, where: str, fmt: str, *, raw: bool = False) -> tuple[str, str | None]:
    """The text for the pickled value ``data`` in ``fmt``, and a note for stderr, if any.

    ``raw`` prints a str as it is. Raises :class:`ValueNotLoadable` if the value can't be
    loaded here (its message says what it is and what to do) and :class:`WrongType` if
    ``fmt`` is json and JSON can't hold it.
    """
    if fmt == "type":
        value, missing = _load_somehow(data, where)
        return f"{type_name(value)}, {_size(data)}", _stand_in_note(missing)
    try:
        value = pickle.loads(data)
    except Exception as error:  # any failure to load is the same to the reader
        value, missing = _load_somehow(data, where)
        if fmt != "repr" or not missing:
            raise ValueNotLoadable(
                f"{where} holds a {type_name(value)} ({_size(data)}) that can't be loaded "
                f"here: {error}. Run sharedstate where your app's modules import (e.g. with "
                "PYTHONPATH set to your app's directory), or pass --format repr to see it "
                "with stand-ins for what can't be imported",
                where=where,
            ) from error
        return repr(value), _stand_in_note(missing)
    if fmt == "repr":
        return repr(value), None
    if fmt == "json":
        check_plain_json(value, where, instead="--format repr")
    return show_loaded(value, raw=raw), None


def show_loaded(value: Any, *, raw: bool = False) -> str:
    """``value`` as JSON when JSON holds it exactly, else in Python's notation."""
    if raw and isinstance(value, str):
        return value
    try:
        check_plain_json(value, "the value")
    except WrongType:
        return repr(value)  # JSON can't hold it exactly (a tuple, a set...)
    return json.dumps(value, ensure_ascii=False)


def _load_somehow(data: bytes, where: str) -> tuple[Any, list[str]]:
    try:
        return load_with_stand_ins(data)
    except Exception as error:  # not a pickle at all: nothing more to show
        raise ValueNotLoadable(
            f"{where} holds {len(data):,} bytes that are not a whole pickle ({error!r})",
            where=where,
        ) from error


def _size(data: bytes) -> str:
    return f"{len(data):,} bytes pickled"


def _stand_in_note(missing: list[str]) -> str | None:
    if not missing:
        return None
    names = ", ".join(missing)
    return f"note: shown with stand-ins for {names}, which can't be imported here"
