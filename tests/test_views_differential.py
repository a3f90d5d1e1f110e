"""Views against plain dicts and lists: thousands of random operations, compared one by one.

Each run stores a random nested value under one key of a real server, then applies the
same random operations to a plain copy of it (the model) and to views read from the
server, reaching containers at any depth by key and index (negative ones too), and
sometimes through views held from earlier steps. After every operation it checks
that both gave the same result (or raised the same kind of error: a SharedStateError
for writes), that the view and the whole top-level view equal the model, and that a
fresh read from the server equals the model. What it covers: every operation docs/api.md
lists for views, plus their reads, conversions and operators.

Where views differ from dict and list on purpose, the model does as views do: a failed
``sort`` leaves the list unchanged (``list.sort`` may leave it half sorted), and a held
view whose element was replaced or removed through its parent refuses writes
(:class:`Conflict`) where a plain object would change an orphan.

Seeds: a fixed one, and a new one each run (its value is in the test's id).
``SHAREDSTATE_DIFF_SEED=N`` runs seed N instead; ``SHAREDSTATE_DIFF_OPERATIONS`` sets
how many operations a run makes.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from sharedstate import Conflict, SharedStateError, get_shared_state

from .support.servers import ServerProcess
from .test_views import views_inside

OPERATIONS = int(os.environ.get("SHAREDSTATE_DIFF_OPERATIONS", "5000"))
_seed = os.environ.get("SHAREDSTATE_DIFF_SEED")
SEEDS = [int(_seed)] if _seed else [20261129, random.SystemRandom().randrange(2**32)]

KEYS: list[Any] = ["a", "b", "c", "d", "e", 0, 1, 2, (1, "x")]
SCALARS: list[Any] = [0, 1, 2, 3, 5, 8, -1, 2.5, "x", "yy", "", None, True, (1, 2)]
_MISSING: Any = object()


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Values:
    """Random keys and values, kept small so that keys repeat and values collide."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def key(self) -> Any:
        return self.rng.choice(KEYS)

    def value(self, depth: int = 2) -> Any:
        roll = self.rng.random()
        if depth <= 0 or roll < 0.55:
            return self.rng.choice(SCALARS)
        if roll < 0.65:
            return [self.rng.randint(-3, 9) for _ in range(self.rng.randint(0, 5))]  # sortable
        if roll < 0.82:
            return [self.value(depth - 1) for _ in range(self.rng.randint(0, 4))]
        return {self.key(): self.value(depth - 1) for _ in range(self.rng.randint(0, 4))}

    def index(self, length: int) -> int:
        return self.rng.randint(-length - 2, length + 1)

    def slice(self, length: int) -> slice:
        def bound() -> int | None:
            return self.rng.choice([None, self.rng.randint(-length - 2, length + 2)])

        step = self.rng.choice(
            [None, None, None, 1, 2, -1, -2, 3, 0 if self.rng.random() < 0.05 else 1]
        )
        return slice(bound(), bound(), step)


@dataclass
class Handle:
    """A view and the model object it stands for, with the model path that leads to it."""

    view: Any
    model: Any
    chain: list[tuple[Any, Any, Any]] = field(default_factory=list)  # (parent, key, child)

    def attached(self) -> bool:
        """Is the model object still where it was found (a dict: at its key; a list: anywhere)?"""
        for parent, key, child in self.chain:
            if isinstance(parent, dict):
                if parent.get(key, _MISSING) is not child:
                    return False
            elif not any(item is child for item in parent):
                return False
        return True


@dataclass
class Operation:
    name: str
    run: Callable[[Any, Any], Any]  # (container, argument) -> result
    argument: Any = None
    writes: bool = True
    plain: bool = False  # the result must hold no views
    raw_errors: bool = False  # may raise the caller's own errors (sort keys)
    gives_view: bool = False  # a read by key or index: a container comes back as a view


def _sort_atomically(container: Any, key: Any, reverse: bool) -> None:
    if type(container) is list:
        container[:] = sorted(container, key=key, reverse=reverse)  # the model
    else:
        container.sort(key=key, reverse=reverse)  # the view


def _incr(container: Any, key: Any, amount: Any) -> Any:
    if type(container) is not dict and type(container) is not list:
        return container.incr(key, amount)  # the view
    current = container.get(key, 0) if isinstance(container, dict) else container[key]
    if not (_number(current) and _number(amount)):
        raise TypeError(f"{current!r} + {amount!r}: incr needs numbers")
    container[key] = current + amount
    return container[key]


def dict_operations(values: Values, model: dict[Any, Any]) -> list[tuple[int, Operation]]:
    key, other = values.key(), values.key()
    value = values.value()
    present = list(model) or [key]
    known = values.rng.choice(present)
    pairs = [(values.key(), values.value()) for _ in range(values.rng.randint(0, 3))]
    words = {f"k{values.rng.randint(0, 3)}": values.value(1) for _ in range(2)}
    amount = values.rng.choice([1, -2, 0.5, "1"])
    return [
        (8, Operation("d[k] = v", lambda d, v: d.__setitem__(key, v), value)),
        (4, Operation("d[known] = v", lambda d, v: d.__setitem__(known, v), value)),
        (4, Operation("d[k]", lambda d, _: d[key], writes=False, gives_view=True)),
        (
            2,
            Operation(
                "d.get(k, v)", lambda d, v: d.get(key, v), value, writes=False, gives_view=True
            ),
        ),
        (2, Operation("k in d", lambda d, _: key in d, writes=False)),
        (3, Operation("del d[k]", lambda d, _: d.__delitem__(key))),
        (2, Operation("del d[known]", lambda d, _: d.__delitem__(known))),
        (2, Operation("d.pop(k)", lambda d, _: d.pop(key))),
        (2, Operation("d.pop(k, v)", lambda d, v: d.pop(key, v), value)),
        (1, Operation("d.popitem()", lambda d, _: d.popitem())),
        (
            3,
            Operation(
                "d.setdefault(k, v)", lambda d, v: d.setdefault(key, v), value, gives_view=True
            ),
        ),
        (1, Operation("d.setdefault(k)", lambda d, _: d.setdefault(other), gives_view=True)),
        (2, Operation("d.update(pairs)", lambda d, v: d.update(v), pairs)),
        (
            2,
            Operation(
                "d.update(dict, **kw)", lambda d, v: d.update(dict(v[0]), **v[1]), (pairs, words)
            ),
        ),
        (1, Operation("d |= dict", lambda d, v: d.__ior__(dict(v)), pairs)),
        (1, Operation("d.clear()", lambda d, _: d.clear())),
        (3, Operation("d.incr(k, n)", lambda d, _: _incr(d, key, amount))),
        (
            1,
            Operation(
                "len, keys, items",
                lambda d, _: (len(d), list(d.keys()), list(d.items())),
                writes=False,
                plain=True,
            ),
        ),
        (
            1,
            Operation(
                "dict(d), {**d}",
                lambda d, _: (dict(d), {**d}, list(d.values())),
                writes=False,
                plain=True,
            ),
        ),
        (
            1,
            Operation(
                "d | dict", lambda d, v: (d | dict(v), dict(v) | d), pairs, writes=False, plain=True
            ),
        ),
        (
            1,
            Operation(
                "d.copy()",
                lambda d, _: (d.copy(), copy.deepcopy(d), pickle.loads(pickle.dumps(d))),
                writes=False,
                plain=True,
            ),
        ),
        (1, Operation("json", lambda d, _: json.dumps(d, default=repr), writes=False)),
        (
            1,
            Operation(
                "d == v", lambda d, v: (d == v, d != v, list(reversed(d))), value, writes=False
            ),
        ),
    ]


def list_operations(values: Values, model: list[Any]) -> list[tuple[int, Operation]]:
    length = len(model)
    index, other = values.index(length), values.index(length)
    value = values.value()
    part = values.slice(length)
    try:
        count = len(range(*part.indices(length)))
    except ValueError:
        count = 0
    if part.step not in (None, 1) and values.rng.random() < 0.8:
        replacement = [values.value(1) for _ in range(count)]  # the size an extended slice needs
    else:
        replacement = [values.value(1) for _ in range(values.rng.randint(0, 3))]
    items = [values.value(1) for _ in range(values.rng.randint(0, 3))]
    present = (
        copy.deepcopy(values.rng.choice(model)) if model and values.rng.random() < 0.7 else value
    )
    times = values.rng.choice([0, 1, 2]) if length < 6 else 1
    amount = values.rng.choice([1, -3, 0.5, None])
    key = values.rng.choice([repr, lambda item: (type(item).__name__, repr(item))])
    backwards = values.rng.random() < 0.3
    return [
        (6, Operation("l[i] = v", lambda lst, v: lst.__setitem__(index, v), value)),
        (4, Operation("l[i:j:k] = vs", lambda lst, v: lst.__setitem__(part, v), replacement)),
        (4, Operation("l[i]", lambda lst, _: lst[index], writes=False, gives_view=True)),
        (2, Operation("l[i:j:k]", lambda lst, _: lst[part], writes=False, plain=True)),
        (3, Operation("del l[i]", lambda lst, _: lst.__delitem__(index))),
        (2, Operation("del l[i:j:k]", lambda lst, _: lst.__delitem__(part))),
        (5, Operation("l.append(v)", lambda lst, v: lst.append(v), value)),
        (2, Operation("l.extend(list)", lambda lst, v: lst.extend(v), items)),
        (1, Operation("l.extend(iterator)", lambda lst, v: lst.extend(iter(v)), items)),
        (1, Operation("l += tuple", lambda lst, v: lst.__iadd__(tuple(v)), items)),
        (1, Operation("l *= n", lambda lst, _: lst.__imul__(times))),
        (4, Operation("l.insert(i, v)", lambda lst, v: lst.insert(index, v), value)),
        (2, Operation("l.pop()", lambda lst, _: lst.pop())),
        (3, Operation("l.pop(i)", lambda lst, _: lst.pop(index))),
        (2, Operation("l.remove(v)", lambda lst, v: lst.remove(v), present)),
        (1, Operation("l.clear()", lambda lst, _: lst.clear())),
        (2, Operation("l.reverse()", lambda lst, _: lst.reverse())),
        (2, Operation("l.sort()", lambda lst, _: _sort_atomically(lst, None, backwards))),
        (
            2,
            Operation(
                "l.sort(key=...)",
                lambda lst, _: _sort_atomically(lst, key, backwards),
                raw_errors=True,
            ),
        ),
        (3, Operation("l.incr(i, n)", lambda lst, _: _incr(lst, index, amount))),
        (
            1,
            Operation(
                "v in l, index, count",
                lambda lst, v: (v in lst, lst.count(v), lst.index(v)),
                present,
                writes=False,
            ),
        ),
        (
            1,
            Operation(
                "len, list, iter",
                lambda lst, _: (len(lst), list(lst), [*lst], tuple(lst)),
                writes=False,
                plain=True,
            ),
        ),
        (
            1,
            Operation(
                "l + list, l * 2",
                lambda lst, v: (lst + v, v + lst, lst * 2, 2 * lst),
                items,
                writes=False,
                plain=True,
            ),
        ),
        (
            1,
            Operation(
                "reversed, copy",
                lambda lst, _: (list(reversed(lst)), lst.copy(), copy.copy(lst)),
                writes=False,
                plain=True,
            ),
        ),
        (
            1,
            Operation(
                "l == v, l < v",
                lambda lst, v: (lst == v, lst != v, lst < v, lst >= v),
                items,
                writes=False,
            ),
        ),
        (1, Operation("json", lambda lst, _: json.dumps(lst, default=repr), writes=False)),
        (1, Operation("l[j]", lambda lst, _: lst[other], writes=False, gives_view=True)),
    ]


def outcome(run: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "returned", run()
    except (KeyError, IndexError, ValueError, TypeError, SharedStateError) as error:
        return "raised", error


class Run:
    """One seed's sequence of operations against a model and a real server."""

    def __init__(self, seed: int, space: str) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.values = Values(self.rng)
        self.state = get_shared_state(start=False)
        self.space = space
        self.model: Any = None
        self.handles: list[Handle] = []
        self.done: list[str] = []
        self.restart()

    # -- reading the stored value ------------------------------------------------------

    def store(self, value: Any) -> None:
        if self.space == "data":
            self.state["root"] = value
        else:
            self.state.namespace.root = value

    def read(self) -> Any:
        return self.state["root"] if self.space == "data" else self.state.namespace.root

    def restart(self) -> None:
        """A new value, read afresh: as a new request would."""
        if self.rng.random() < 0.6:
            self.model = {self.values.key(): self.values.value(3) for _ in range(6)}
        else:
            self.model = [self.values.value(3) for _ in range(6)]
        self.store(self.model)
        self.reread()

    def reread(self) -> None:
        root = self.read()
        self.fail_unless(root == self.model, "a fresh read differs from the model")
        self.handles = [Handle(root, self.model)]

    # -- choosing where to operate -----------------------------------------------------

    def target(self) -> Handle:
        if len(self.handles) > 1 and self.rng.random() < 0.4:
            return self.rng.choice(self.handles[1:])  # a view held from before, maybe moved
        handle = self.handles[0]
        while self.rng.random() < 0.7:
            model = handle.model
            if isinstance(model, dict):
                steps = [key for key, value in model.items() if type(value) in (dict, list)]
            else:
                steps = [index for index, value in enumerate(model) if type(value) in (dict, list)]
            if not steps:
                break
            step = self.rng.choice(steps)
            child = model[step]
            asked = (
                step - len(model) if isinstance(model, list) and self.rng.random() < 0.3 else step
            )
            view = handle.view[asked]
            key = step if isinstance(model, dict) else None
            handle = Handle(view, child, [*handle.chain, (model, key, child)])
            self.fail_unless(view == child, f"reading [{asked!r}] gave a view unlike the model")
        if len(self.handles) < 40:
            self.handles.append(handle)
        return handle

    # -- one operation -----------------------------------------------------------------

    def step(self) -> None:
        handle = self.target()
        if isinstance(handle.model, dict):
            choices = dict_operations(self.values, handle.model)
        else:
            choices = list_operations(self.values, handle.model)
        weights = [weight for weight, _ in choices]
        operation = self.rng.choices([op for _, op in choices], weights)[0]
        held = "" if handle in self.handles[:1] else f", depth {len(handle.chain)}"
        self.done.append(f"{operation.name} ({type(handle.model).__name__}{held})")
        argument = operation.argument
        if operation.writes and not handle.attached():
            # On a plain object this would change an orphan; a view refuses (or finds the
            # argument wrong first, as the orphan would).
            orphan = copy.deepcopy(handle.model)
            expected = outcome(lambda: operation.run(orphan, copy.deepcopy(argument)))
            got = outcome(lambda: operation.run(handle.view, argument))
            if expected[0] == "raised" and not isinstance(got[1], Conflict):
                self.compare(operation, expected, got)
            elif orphan == handle.model and got[0] == "returned":
                self.compare(operation, expected, got)  # a no-op (an empty update) may pass
            else:
                refused = isinstance(got[1], Conflict) and "replaced or removed" in str(got[1])
                self.fail_unless(refused, f"{operation.name} through a detached view: {got!r}")
            return
        expected = outcome(lambda: operation.run(handle.model, copy.deepcopy(argument)))
        got = outcome(lambda: operation.run(handle.view, argument))
        self.compare(operation, expected, got)
        if isinstance(argument, list):
            argument.append("changed after it was sent")  # the views must not follow
        if got[0] == "returned" and operation.gives_view and type(expected[1]) in (dict, list):
            self.adopt(handle, operation, expected[1], got[1])

    def compare(
        self, operation: Operation, expected: tuple[str, Any], got: tuple[str, Any]
    ) -> None:
        if expected[0] == "raised":
            error = got[1]
            kind = next(
                k
                for k in (KeyError, IndexError, ValueError, TypeError)
                if isinstance(expected[1], k)
            )
            self.fail_unless(
                got[0] == "raised" and isinstance(error, kind),
                f"{operation.name}: the model raised {expected[1]!r}, the view gave {got!r}",
            )
            if operation.writes and not operation.raw_errors:
                self.fail_unless(
                    isinstance(error, SharedStateError), f"{operation.name}: raw {error!r}"
                )
            return
        self.fail_unless(
            got[0] == "returned" and got[1] == expected[1],
            f"{operation.name}: the model returned {expected[1]!r}, the view gave {got!r}",
        )
        if operation.plain:
            inside = views_inside(got[1])
            self.fail_unless(not inside, f"{operation.name} gave views at {inside}")

    def adopt(self, handle: Handle, operation: Operation, model: Any, view: Any) -> None:
        """A container a read (or setdefault) returned: keep it as a handle when it is a view."""
        parent = handle.model
        if isinstance(parent, dict):
            key = next((key for key, value in parent.items() if value is model), _MISSING)
            if key is _MISSING:
                return  # a popped value: plain data
        elif any(item is model for item in parent):
            key = None
        else:
            return
        self.fail_unless(
            views_inside(view) == ["the value itself"], f"{operation.name}: not a view"
        )
        self.handles.append(Handle(view, model, [*handle.chain, (parent, key, model)]))

    def check(self, index: int) -> None:
        root = self.handles[0].view
        self.fail_unless(root == self.model, "the top-level view differs from the model")
        fresh = self.read()
        self.fail_unless(fresh == self.model, "a fresh read from the server differs from the model")
        if index % 50 == 0:
            plain = dict(root) if isinstance(root, dict) else list(root)
            self.fail_unless(views_inside(plain) == [], "dict(view) or list(view) holds views")
            for handle in self.handles:
                self.fail_unless(handle.view == handle.model, "a held view differs from the model")

    def fail_unless(self, condition: bool, message: str) -> None:
        if not condition:
            recent = "\n  ".join(self.done[-8:])
            raise AssertionError(
                f"seed {self.seed} ({self.space}), after {len(self.done)} operations: {message}\n"
                f"model: {self.model!r}\nlast operations:\n  {recent}"
            )

    def go(self, operations: int) -> None:
        for index in range(operations):
            self.step()
            self.check(index)
            roll = self.rng.random()
            if roll < 0.02 or len(pickle.dumps(self.model)) > 6000:
                self.restart()
            elif roll < 0.05:
                self.reread()
        self.fail_unless(self.read() == self.model, "the final value differs")


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("seed", "space"),
    [*((seed, "data") for seed in SEEDS), (SEEDS[0] + 1, "namespace")],
    ids=lambda value: str(value),
)
def test_views_do_what_dicts_and_lists_do_for_thousands_of_random_operations(
    server: ServerProcess, seed: int, space: str
) -> None:
    Run(seed, space).go(OPERATIONS)
