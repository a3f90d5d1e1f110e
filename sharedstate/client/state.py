"""The worker API: ``get_shared_state()`` and the object it returns."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any, NoReturn, Protocol

from ..address import Address
from ..backends import Transport, connect_sync
from ..codec import DATA, NAMESPACE, Contents
from ..config import Settings, load_settings
from ..errors import KeyNotFound, LeaseExpired, SharedStateError, Timeout
from .commands import MISSING, Call, Commands, load_plain
from .views import wrap


class SharedLock:
    """The server's one shared lock, owned by the thread that acquires it.

    If the owning process dies (even by SIGKILL) its connection drops and the server
    releases the lock. A process that hangs while holding it (stopped, deadlocked) keeps
    its connection, so for that case ``acquire(lease=...)`` lets the server take the lock
    back after a time. It is not reentrant: acquiring it twice in one thread is an error
    rather than a deadlock.
    """

    __slots__ = ("_commands", "_run")

    def __init__(self, run: _Run, commands: Commands) -> None:
        self._run = run
        self._commands = commands

    def acquire(
        self, blocking: bool = True, timeout: float | None = None, lease: float | None = None
    ) -> bool:
        """Take the lock; True if taken. ``timeout=None`` (or -1) waits as long as needed.

        ``lease``: seconds after which the server frees the lock even if this thread has
        not released it; the late ``release()`` then raises :class:`LeaseExpired`.
        """
        return bool(self._run(self._commands.lock_acquire(blocking, timeout, lease)))

    def release(self) -> None:
        self._run(self._commands.lock_release())

    def locked(self) -> bool:
        """Whether anyone holds the lock right now."""
        return bool(self._run(self._commands.lock_locked()))

    @contextlib.contextmanager
    def hold(self, timeout: float | None = None, lease: float | None = None) -> Iterator[None]:
        """``with state.lock.hold(timeout=5, lease=30):``: like ``with state.lock:``.

        Raises :class:`Timeout` if the lock can't be had within ``timeout`` seconds.
        """
        if not self.acquire(timeout=timeout, lease=lease):
            raise lock_timeout(timeout)
        try:
            yield
        except BaseException as error:
            self.__exit__(type(error), error, None)
            raise
        self.__exit__(None, None, None)

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self.release()
        except SharedStateError as error:
            if not release_failure_hidden(error, exc_type):
                raise


def lock_timeout(timeout: float | None) -> Timeout:
    """The error of ``lock.hold(timeout=...)`` when the lock could not be had in time."""
    return Timeout(
        f"state.lock was held by another thread or process for more than {timeout} s; "
        "try again, or raise the timeout"
    )


def release_failure_hidden(error: SharedStateError, exc_type: object) -> bool:
    """Whether a failed release at the end of a lock's block goes unreported.

    It does when the block itself failed (often because the connection dropped, which
    released the lock): that failure is the one to report. A lapsed lease never goes
    unreported: the work under the lock may have overlapped another holder's.
    """
    return exc_type is not None and not isinstance(error, LeaseExpired)


class SharedNamespace:
    """Attributes shared by all workers: ``state.namespace.number = 0``."""

    __slots__ = ("_commands", "_run", "_transport")

    def __init__(self, transport: Transport, run: _Run, commands: Commands) -> None:
        object.__setattr__(self, "_transport", transport)
        object.__setattr__(self, "_run", run)
        object.__setattr__(self, "_commands", commands)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        value = self._run(self._commands.ns_get(name))
        return wrap(self._transport, NAMESPACE, (name,), value)

    def __setattr__(self, name: str, value: Any) -> None:
        self._run(self._commands.ns_set(name, value))

    def __delattr__(self, name: str) -> None:
        self._run(self._commands.ns_delete(name))

    def to_dict(self) -> dict[str, Any]:
        """A plain copy of all attributes."""
        result: dict[str, Any] = self._run(self._commands.ns_to_dict())
        return result

    def __repr__(self) -> str:
        attributes = ", ".join(f"{name}={value!r}" for name, value in self.to_dict().items())
        return f"Namespace({attributes})"


class _Run(Protocol):
    def __call__(self, call: Call) -> Any: ...


class SharedState(MutableMapping[Any, Any]):
    """A dict shared by every process connected to one sharedstate server.

    Each dict operation is one round trip to the server and atomic there. Nested dicts
    and lists come back as views whose writes go to the server
    (:mod:`sharedstate.client.views`). Safe to use from many threads, and after ``fork()``.
    """

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._call = transport.call
        self._commands = commands = Commands(transport.encode, self._wrap)
        self.address: Address = transport.address
        self.lock = SharedLock(self._run, commands)
        self.namespace = SharedNamespace(transport, self._run, commands)

    def _run(self, call: Call) -> Any:
        return call.finish(self._call(call.method, *call.args, waits=call.waits))

    # -- the dict protocol ----------------------------------------------------------

    def __getitem__(self, key: Any) -> Any:
        return self._run(self._commands.getitem(key))

    def __setitem__(self, key: Any, value: Any) -> None:
        self._run(self._commands.set(key, value))

    def __delitem__(self, key: Any) -> None:
        self._run(self._commands.delete(key))

    def __contains__(self, key: object) -> bool:
        return bool(self._run(self._commands.contains(key)))

    def __len__(self) -> int:
        return int(self._run(self._commands.length()))

    def __iter__(self) -> Iterator[Any]:
        return iter(self.keys())

    def keys(self) -> list[Any]:  # type: ignore[override]
        """The keys, as a list taken at one moment."""
        return list(self._run(self._commands.keys()))

    def items(self) -> list[tuple[Any, Any]]:  # type: ignore[override]
        """``(key, value)`` pairs taken at one moment, as plain data.

        Like a view's, only reading by key (``state[k]``, ``get``, ``setdefault``) gives
        views that write back; what lists or copies the values gives plain data.
        """
        return list(self._run(self._commands.items()))

    def values(self) -> list[Any]:  # type: ignore[override]
        """The values, taken at one moment, as plain data (see :meth:`items`)."""
        return list(self._run(self._commands.values()))

    def get(self, key: Any, default: Any = None) -> Any:
        return self._run(self._commands.get(key, default))

    def setdefault(self, key: Any, default: Any = None) -> Any:
        return self._run(self._commands.setdefault(key, default))

    def pop(self, key: Any, default: Any = MISSING) -> Any:
        return self._run(self._commands.pop(key, default))

    def popitem(self) -> tuple[Any, Any]:
        for key in self.keys():
            with contextlib.suppress(KeyNotFound):
                return key, self.pop(key)
        raise KeyNotFound("popitem(): the state is empty")

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """Set many keys in one round trip, atomically."""
        self._run(self._commands.update(other, kwargs))

    def clear(self) -> None:
        self._run(self._commands.clear())

    # -- batches: one round trip each -----------------------------------------------

    def get_many(self, keys: Iterable[Any]) -> dict[Any, Any]:
        """The values of ``keys`` that exist, in one round trip, taken at one moment::

        state.get_many(["a", "b", "missing"])   # {"a": 1, "b": 2}
        """
        result: dict[Any, Any] = self._run(self._commands.get_many(keys))
        return result

    def set_many(self, mapping: Mapping[Any, Any], ttl: float | None = None) -> None:
        """Set every key of ``mapping`` in one round trip, atomically (same as update);
        with ``ttl``, every one of them expires ``ttl`` seconds from now."""
        self._run(self._commands.set_many(mapping, ttl))

    def delete_many(self, keys: Iterable[Any]) -> int:
        """Delete ``keys`` in one round trip, atomically; return how many existed."""
        return int(self._run(self._commands.delete_many(keys)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return self.to_dict() == dict(other.items())

    __hash__ = None  # type: ignore[assignment]

    # -- beyond dict ----------------------------------------------------------------

    def incr(self, key: Any, amount: int | float = 1, ttl: float | None = None) -> Any:
        """Atomically add ``amount`` to the number at ``key`` and return the new value.

        A missing key counts as 0; ``incr(key, -1)`` decrements::

            ticket = state.incr("tickets")   # 1, 2, 3... each worker gets its own

        With ``ttl``, a key this call creates expires ``ttl`` seconds later (an existing
        key keeps its expiry): a fixed-window rate limit in one round trip::

            if state.incr(f"hits:{ip}:{int(time.time() // 60)}", ttl=60) > 100: ...
        """
        return self._run(self._commands.incr(key, amount, ttl))

    # -- inside values, by path -----------------------------------------------------

    def get_in(self, path: Any, default: Any = None) -> Any:
        """The value at ``path`` inside the state, as plain data; ``default`` if any step
        is missing::

            state.get_in(("cfg", "db", "port"))        # state["cfg"]["db"]["port"]
            state.get_in(("users", 0, "name"), "?")    # "?" if there is no such user
        """
        return self._run(self._commands.get_in(path, default))

    def set_in(self, path: Any, value: Any) -> Any:
        """``state[a][b][c] = value`` as one atomic write: ``state.set_in((a, b, c), value)``.

        The first step is the key; the others walk into dicts (by key) and lists (by
        position, as they are when the write arrives). Unlike a view, it reads nothing
        first. A missing step raises :class:`KeyNotFound` (or :class:`IndexOutOfRange`).
        """
        return self._run(self._commands.set_in(path, value))

    def delete_in(self, path: Any) -> None:
        """``del state[a][b][c]`` as one atomic write."""
        self._run(self._commands.delete_in(path))

    def pop_in(self, path: Any, default: Any = MISSING) -> Any:
        """``state[a][b].pop(c[, default])`` as one atomic write; returns what was there."""
        return self._run(self._commands.pop_in(path, default))

    def incr_in(self, path: Any, amount: int | float = 1) -> Any:
        """Add ``amount`` to the number at ``path`` (a missing last step counts as 0) and
        return the new value, atomically: ``state.incr_in(("stats", "hits"))``."""
        return self._run(self._commands.incr_in(path, amount))

    def append_in(self, path: Any, value: Any) -> None:
        """Append ``value`` to the list at ``path``: ``state.append_in(("log",), entry)``."""
        self._run(self._commands.append_in(path, value))

    def extend_in(self, path: Any, values: Iterable[Any]) -> None:
        """Extend the list at ``path`` with ``values``, atomically."""
        self._run(self._commands.extend_in(path, values))

    def update_in(self, path: Any, other: Any = (), /, **kwargs: Any) -> None:
        """``dict.update`` of the dict at ``path``, atomically:
        ``state.update_in(("cfg", "db"), host="db2", port=5433)``."""
        self._run(self._commands.update_in(path, other, kwargs))

    # -- expiry ---------------------------------------------------------------------

    def set(self, key: Any, value: Any, ttl: float | None = None) -> None:
        """``state[key] = value``; with ``ttl``, the key expires ``ttl`` seconds from now.

        Like every plain set, it replaces an expiry the key had.
        """
        self._run(self._commands.set(key, value, ttl))

    def add(self, key: Any, value: Any, ttl: float | None = None) -> bool:
        """Set ``key`` only if it is missing (or expired), atomically; True if it did.

        Exactly one of any number of workers adding the same key wins: a lock, an
        idempotency key, a first-come claim.
        """
        return bool(self._run(self._commands.add(key, value, ttl)))

    def expire(self, key: Any, ttl: float) -> bool:
        """Make ``key`` expire ``ttl`` seconds from now; False if it is missing.

        A ``ttl`` of 0 or less deletes the key now (as Redis's EXPIRE does).
        """
        return bool(self._run(self._commands.expire(key, ttl)))

    def ttl(self, key: Any) -> float | None:
        """Seconds until ``key`` expires; None if it never does. Raises
        :class:`KeyNotFound` if it is missing (or expired)."""
        seconds: float | None = self._run(self._commands.ttl(key))
        return seconds

    def persist(self, key: Any) -> bool:
        """Make ``key`` never expire; False if it is missing or had no expiry."""
        return bool(self._run(self._commands.persist(key)))

    @contextlib.contextmanager
    def edit(
        self,
        key: Any,
        default: Any = MISSING,
        *,
        timeout: float | None = None,
        ttl: float | None = None,
    ) -> Iterator[Any]:
        """Read-modify-write any picklable value, atomically against other edits and incr.

        The value is written back when the block ends without an exception; other
        ``edit()``, ``incr()`` and writes of this key wait meanwhile::

            with state.edit("matrix") as matrix:   # a numpy array, say
                matrix[1] = 0

        A missing key raises :class:`KeyNotFound` unless a ``default`` is given.
        ``timeout`` bounds the wait for another client's edit of the same key. The value
        keeps the key's TTL, or with ``ttl`` expires that many seconds after it is
        written back (in the same operation: a rate-limit window, a session).
        """
        commands = self._commands
        begin = commands.edit_begin(key, default, timeout, ttl)
        value = self._run(begin)
        try:
            yield value
            commit = commands.edit_commit(key, value, ttl)
        except BaseException:
            with contextlib.suppress(SharedStateError):
                self._run(commands.edit_abort(key))
            raise
        self._run(commit)

    def to_dict(self) -> dict[Any, Any]:
        """A plain deep copy of the whole dict."""
        result: dict[Any, Any] = self._run(self._commands.to_dict())
        return result

    def export(self) -> Contents:
        """Everything (dict and namespace) at one moment, values still pickled.

        This is what dump files and snapshots hold; see :mod:`sharedstate.persistence.dumpfile`.
        """
        contents: Contents = self._run(self._commands.export())
        return contents

    def pickled(self, key: Any) -> bytes:
        """The value of ``key`` as stored: its pickle, not loaded.

        For tools that show or copy values whose classes they can't import (the CLI's
        ``get``); raises :class:`KeyNotFound` if the key is missing.
        """
        data: bytes = self._run(self._commands.pickled(key))
        return data

    def restore(self, contents: Contents, *, replace: bool) -> None:
        """Load what :meth:`export` returned, atomically: replace everything, or merge."""
        self._run(self._commands.restore(contents, replace=replace))

    def close(self) -> None:
        """Close this process's connections; the next operation reconnects."""
        self._transport.close()

    def __repr__(self) -> str:
        return f"<SharedState at {self.address}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "a SharedState can't be pickled; call get_shared_state() in the other process"
        )

    def _wrap(self, key: Any, data: bytes) -> Any:
        """The value stored at ``key``: dicts and lists as views (the hot path of reads)."""
        value = load_plain(key, data)
        if isinstance(value, (dict, list)):
            return wrap(self._transport, DATA, (key,), value)
        return value


_states: dict[tuple[Any, ...], SharedState] = {}  # by resolved settings
_states_lock = threading.Lock()
# get_shared_state() is called in every request handler, so a repeated call must not
# read the environment and .env again: what each set of arguments resolved to is kept
# for the life of the process (a forked child resolves again) or until forget_settings().
_by_arguments: dict[tuple[Any, ...], SharedState] = {}
_by_arguments_pid = os.getpid()


def get_shared_state(
    address: str | tuple[str, int] | None = None,
    authkey: bytes | str | None = None,
    *,
    start: bool = True,
    timeout: float = 10.0,
) -> SharedState:
    """Connect to the sharedstate server, starting it first if none is running.

    ``address`` and ``authkey`` default to the settings (``SHAREDSTATE_ADDRESS``...,
    see docs/configuration.md). With ``start=False``, :class:`ServerNotRunning` is raised when
    nothing listens. ``timeout`` bounds connecting and starting. Repeated calls with the
    same arguments return the same object, which is safe to share between threads, and
    cost next to nothing, so a request handler may call it every time::

        state = get_shared_state()
        state.incr("hits")

    The settings are read on the first call with given arguments, and again in a child
    after ``fork()``; to read a changed environment or ``.env`` later in the same
    process, call :func:`forget_settings` first.
    """
    arguments = (address, authkey, start, timeout)
    if _by_arguments_pid == os.getpid():
        try:
            state = _by_arguments.get(arguments)
        except TypeError:  # an unhashable argument: resolve it each time
            state = None
        if state is not None:
            return state
    settings = load_settings({"address": address, "authkey": authkey}, overrides_from="argument")
    settings_key = (settings, start, timeout)  # all of them: any may change how it connects
    with _states_lock:
        state = _states.get(settings_key)
        if state is None:
            state = connect_state(settings, start=start, timeout=timeout)
            _states[settings_key] = state
        _remember_arguments(arguments, state)
    return state


def forget_settings() -> None:
    """Make the next :func:`get_shared_state` read the environment and ``.env`` again.

    ``get_shared_state()`` resolves its settings once per process for each set of
    arguments, so a change to ``os.environ``, to ``.env`` or of the working directory
    takes effect only after this call. The states it returned keep working; if the
    settings did not change, the next call returns the same object as before::

        os.environ["SHAREDSTATE_ADDRESS"] = "/run/app/state.sock"
        forget_settings()
        state = get_shared_state()   # connects to /run/app/state.sock
    """
    global _by_arguments_pid
    with _states_lock:
        _by_arguments.clear()
        _by_arguments_pid = os.getpid()


def _remember_arguments(arguments: tuple[Any, ...], state: SharedState) -> None:
    # Called with _states_lock held. In a child forked without the at-fork hooks the
    # parent's entries are still here: drop them first. The pid is set last, so that a
    # call that finds it equal finds only this process's entries.
    global _by_arguments_pid
    if _by_arguments_pid != os.getpid():
        _by_arguments.clear()
        _by_arguments_pid = os.getpid()
    with contextlib.suppress(TypeError):  # an unhashable argument: nothing to remember it by
        _by_arguments[arguments] = state


def connect_state(
    settings: Settings, *, start: bool, timeout: float, lazy: bool = False
) -> SharedState:
    """A new :class:`SharedState` for ``settings`` (not cached).

    It connects now, so errors show at once, unless ``lazy``: then on first use, in
    whichever process and thread uses it (what a web app built before forking needs).
    """

    transport = connect_sync(settings, start=start, timeout=timeout)
    state = SharedState(transport)
    if not lazy:
        transport.connect()
    return state


def reset_after_fork() -> None:
    """Drop the connections this process inherited; each state reconnects on first use.

    Calls after ``fork()`` do this by themselves; gunicorn's ``post_fork`` calls it so
    that a worker never even holds a reference to its master's sockets.
    """
    with _states_lock:
        for state in _states.values():
            state._transport.forget_inherited()


def _forget_settings_in_child() -> None:
    # Runs in a child after fork(), before any other thread exists there. A parent's
    # thread may have held the lock at the fork: it would stay held here, so a new one.
    global _states_lock, _by_arguments_pid
    _states_lock = threading.Lock()
    _by_arguments.clear()
    _by_arguments_pid = os.getpid()


os.register_at_fork(after_in_child=_forget_settings_in_child)
