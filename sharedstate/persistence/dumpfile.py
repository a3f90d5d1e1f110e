"""Dump files: the whole state in a file an operator keeps, moves or edits.

Two formats:

- ``pickle``: the snapshot format (:mod:`sharedstate.persistence.snapshot`), checksummed, holding
  every value exactly as stored, whatever its type, and the keys' expiry times. A dump
  can also serve as a ``--snapshot`` file.
- ``json``: ``{"data": {...}, "namespace": {...}, "expires": {...}}`` for plain data
  only: str keys; dicts, lists, str, int, finite floats, bools and None. Anything else
  is refused, naming the key, rather than written as something that would load
  differently. ``"expires"`` is written only when keys expire: ``{"key": time, ...}``,
  the wall-clock time (seconds since the epoch, a float) each of those keys of
  ``"data"`` expires at. Reading, it is optional; a time that is not a finite number,
  or one for a key ``"data"`` does not hold, is refused.
"""

from __future__ import annotations

import codecs
import json
import math
import os
import pickle
import sys
from typing import Any

from ..codec import Contents, decode, describe, encode
from ..errors import ConfigError, CorruptFile, WrongType
from ..permissions import check_not_writable_by_others
from .durable import write_atomically
from .snapshot import MAGIC, expiry_problem, read_snapshot, snapshot_bytes

FORMATS = ("pickle", "json")


def write_dump(path: str, contents: Contents, fmt: str, *, force: bool = False) -> int:
    """Write ``contents`` to ``path`` (``-``: standard output); return the bytes written.

    An existing file is only replaced with ``force``; the replacement is atomic.
    """
    chunks = _json_chunks(contents) if fmt == "json" else snapshot_bytes(contents)
    if path == "-":
        size = 0
        for chunk in chunks:
            sys.stdout.buffer.write(chunk)
            size += len(chunk)
        sys.stdout.buffer.flush()
        return size
    if os.path.lexists(path) and not force:
        raise ConfigError(
            f"{path} already exists; choose another name, or pass --force to replace it"
        )
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):  # else the error would name write_atomically's temp file
        problem = "is not a directory" if os.path.lexists(directory) else "does not exist"
        raise ConfigError(f"cannot write {path}: directory {directory} {problem}")
    return write_atomically(path, chunks)


def read_dump(path: str, fmt: str = "auto") -> Contents:
    """Read a dump written by :func:`write_dump` (``fmt="auto"`` tells them apart)."""
    if fmt == "auto":
        with open(path, "rb") as file:
            fmt = "pickle" if file.read(len(MAGIC)) == MAGIC else "json"
    if fmt == "pickle":
        check_not_writable_by_others(path, "dump file")
        contents, _ = read_snapshot(path)
        return contents
    return _read_json(path)


def _json_chunks(contents: Contents) -> list[bytes]:
    document: dict[str, dict[str, Any]] = {"data": {}, "namespace": {}}
    for section, root, entries in (
        ("data", "state", contents.data),
        ("namespace", "state.namespace", contents.namespace),
    ):
        for key, data in entries.items():
            where = describe(root, [key]) if section == "data" else f"{root}.{key}"
            if not isinstance(key, str):
                raise WrongType(
                    f"{where}: JSON keys must be strings, not {type(key).__name__}; "
                    "use --format pickle"
                )
            value = decode(
                data, where, hint="run where the app's modules import, or use --format pickle"
            )
            check_plain_json(value, where)
            document[section][key] = value
    if contents.expires:
        document["expires"] = {}
        for key, when in contents.expires.items():
            if problem := expiry_problem(key, when, contents.data):
                raise ValueError(f"can't write this dump: {problem}")  # a bug, not the data
            document["expires"][key] = float(when)
    return [json.dumps(document, indent=1, ensure_ascii=False, allow_nan=False).encode() + b"\n"]


def check_plain_json(value: Any, where: str, instead: str = "--format pickle") -> None:
    """Raise :class:`WrongType`, naming the place, unless JSON holds ``value`` exactly.

    The message ends by suggesting ``instead``, the format that would hold it.
    """
    kind = type(value)
    if kind in (str, int, bool) or value is None:
        return
    if kind is float:
        if math.isfinite(value):
            return
        raise WrongType(f"{where} is {value!r}, which JSON can't hold; use {instead}")
    if kind is list:
        for index, item in enumerate(value):
            check_plain_json(item, f"{where}[{index}]", instead)
        return
    if kind is dict:
        for key, item in value.items():
            if not isinstance(key, str):
                raise WrongType(
                    f"{where} has the {type(key).__name__} key {key!r}; JSON keys are strings. "
                    f"Use {instead}"
                )
            check_plain_json(item, f"{where}[{key!r}]", instead)
        return
    raise WrongType(
        f"{where} holds a {kind.__name__}, which JSON can't represent faithfully; use {instead}"
    )


def _read_json(path: str) -> Contents:
    with open(path, "rb") as file:
        try:
            document = json.load(file)
        except ValueError as error:
            file.seek(0)
            raise CorruptFile(
                f"{path} is {_what_it_looks_like(file.read(64), error)}; `restore` reads "
                "what `sharedstate dump` writes: its pickle format, or JSON of the shape "
                '{"data": {...}, "namespace": {...}}',
                path=path,
            ) from None
    if not isinstance(document, dict) or not set(document) <= {"data", "namespace", "expires"}:
        raise CorruptFile(
            f'{path}: expected a JSON object with "data" and/or "namespace" objects '
            '(and optionally "expires")',
            path=path,
        )
    contents = Contents()
    for section, target in (("data", contents.data), ("namespace", contents.namespace)):
        entries = _section(document, section, path)
        for key, value in entries.items():
            target[key] = encode(value, describe("state", [key]))
    for key, when in _section(document, "expires", path).items():
        if problem := expiry_problem(key, when, contents.data):
            raise CorruptFile(f'{path}: in "expires", {problem}', path=path)
        contents.expires[key] = float(when)
    return contents


def _section(document: dict[str, Any], section: str, path: str) -> dict[str, Any]:
    entries = document.get(section, {})
    if not isinstance(entries, dict):
        raise CorruptFile(f'{path}: "{section}" must be a JSON object', path=path)
    return entries


def _what_it_looks_like(start: bytes, error: ValueError) -> str:
    """What a file that is not a dump seems to be, from its first bytes, for a message."""
    if not start:
        return "empty"
    if start[0] == pickle.PROTO[0]:
        return (
            "a Python pickle, not a sharedstate dump (to load a dict you pickled yourself, "
            "do it from Python: state.update(pickle.load(file)))"
        )
    try:
        codecs.getincrementaldecoder("utf-8")().decode(start)  # a cut-off last character is fine
    except UnicodeDecodeError:
        return f"binary data, not a sharedstate dump (it starts with {start[:8]!r})"
    return f"text, but not valid JSON ({error})"
