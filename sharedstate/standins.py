"""Loading a pickle whose classes this process can't import, to show what it holds.

The CLI runs outside the app, so a value holding the app's own objects (a ``User``, an
enum) can't be loaded the usual way. :func:`load_with_stand_ins` loads it anyway: where
a class or function can't be imported, it puts a :class:`StandIn` that records what the
object was built from, so an operator still sees what is stored. Only for showing: a
stand-in is not the object, and nothing here is ever written back.
"""

from __future__ import annotations

import io
import pickle
from typing import Any


class StandIn:
    """An object of a class (or the result of a function) this process can't import."""

    # The dotted name it stands for; each missing name gets its own subclass.
    dotted_name = "?"
    # What it was built from: arguments, keyword arguments, then states and items set.
    _built: tuple[tuple[Any, ...], dict[str, Any], list[Any]]

    def __new__(cls, *args: Any, **kwargs: Any) -> StandIn:
        self = super().__new__(cls)
        self.__dict__["_built"] = (args, kwargs, [])
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # __new__ kept them; a missing function is "called" the same way

    def __setstate__(self, state: Any) -> None:
        self._built[2].append(state)

    # What pickle's APPEND(S) and SETITEM(S) opcodes call on a container object.
    def append(self, item: Any) -> None:
        self._built[2].append([item])

    def extend(self, items: Any) -> None:
        self._built[2].append(list(items))

    def __setitem__(self, key: Any, value: Any) -> None:
        self._built[2].append({key: value})

    def __repr__(self) -> str:
        args, kwargs, states = self._built
        parts = [repr(arg) for arg in args]
        parts += [f"{name}={value!r}" for name, value in kwargs.items()]
        for state in states:
            if _is_slots_state(state):
                # (__dict__ or None, __slots__ values): show both as attributes
                state = {**(state[0] or {}), **state[1]}
            if isinstance(state, dict) and all(isinstance(name, str) for name in state):
                parts += [f"{name}={value!r}" for name, value in state.items()]
            else:
                parts.append(repr(state))
        return f"{self.dotted_name}({', '.join(parts)})"


def _is_slots_state(state: Any) -> bool:
    return (
        isinstance(state, tuple)
        and len(state) == 2
        and (state[0] is None or isinstance(state[0], dict))
        and isinstance(state[1], dict)
    )


class _StandInUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.stand_ins: dict[str, type[StandIn]] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except Exception:  # missing, or its module fails to import here
            dotted = f"{module}.{name}"
            if dotted not in self.stand_ins:
                self.stand_ins[dotted] = type(name, (StandIn,), {"dotted_name": dotted})
            return self.stand_ins[dotted]


def load_with_stand_ins(data: bytes) -> tuple[Any, list[str]]:
    """Unpickle ``data``, with stand-ins for what can't be imported, and name those.

    Raises what :func:`pickle.loads` raises for data that is not a whole pickle.
    """
    unpickler = _StandInUnpickler(data)
    value = unpickler.load()
    return value, sorted(unpickler.stand_ins)


def type_name(value: Any) -> str:
    """``value``'s type as a reader would look it up: ``dict``, ``myapp.models.User``."""
    if isinstance(value, StandIn):
        return value.dotted_name
    kind = type(value)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"
