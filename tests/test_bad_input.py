"""Bad input: a clear SharedStateError for the caller, a server that keeps serving everyone.

A request crafted to make the server allocate gigabytes, wrong and weak keys, values
that can't cross the wire, keys that can't be keys, paths into nothing, and addresses
that can't be used. Random bytes on the socket are fuzzed in test_fuzz.py.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import stat
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import pytest

from bench.procfs import resources
from sharedstate import (
    AuthenticationFailed,
    ConfigError,
    InsecurePermissions,
    InvalidKey,
    KeyNotFound,
    ServerError,
    SharedState,
    SharedStateError,
    ValueNotLoadable,
    ValueNotPicklable,
    WrongType,
    get_shared_state,
)
from sharedstate.address import MAX_SOCKET_PATH_BYTES
from sharedstate.client.transport import handshake

from .support.clients import fresh_state, write_client_only_module
from .support.processes import run_cli, run_in_processes, wait_until
from .support.procfs import peak_memory, server_pids
from .support.servers import ServerFactory, ServerProcess
from .support.wire import (
    assert_still_serving,
    authenticated,
    frame,
    key_of,
    read_reply,
    wait_for_no_growth,
)

WRONG_KEY = b"not-the-server-key-but-long-enough"


# -- helpers ------------------------------------------------------------------------------


def no_server_left(workdir: str) -> None:
    """No server runs for this test (a refused `serve --detach` child takes a moment to exit)."""
    try:
        wait_until(lambda: not server_pids(workdir), timeout=10)
    except AssertionError:
        raise AssertionError(f"a server is running: pids {server_pids(workdir)}") from None


def outcome(operation: Callable[[], Any]) -> BaseException | None:
    try:
        operation()
    except Exception as error:
        return error
    return None


def refusal_problems(
    operations: Mapping[str, Callable[[], Any]], expected: type[SharedStateError], *words: str
) -> list[str]:
    """Run each operation; describe every one that did not raise ``expected`` with ``words``."""
    problems = []
    for name, operation in operations.items():
        error = outcome(operation)
        if not isinstance(error, expected):
            problems.append(f"{name}: {error!r}, not {expected.__name__}")
        elif missing := [word for word in words if word not in str(error)]:
            problems.append(f"{name}: {str(error)!r} does not say {missing}")
    return problems


# -- 1. bytes on the socket (fuzzed in test_fuzz.py) --------------------------------------


def test_a_seven_byte_request_cannot_make_the_server_allocate_hundreds_of_megabytes(
    server: ServerProcess,
) -> None:
    # LONG_BINPUT with memo index 2**24: CPython grows the memo to 2**25 slots (256 MB)
    # before noticing anything. Random bytes hit such an index about once in 300 requests,
    # and an index near 2**31 asks for 32 GB.
    bomb = b"N" + b"r" + (1 << 24).to_bytes(4, "little") + b"."
    before = peak_memory(server.pid)
    sock = authenticated(server.address, key_of(server), adopted=True)
    sock.sendall(frame(bomb))
    assert read_reply(sock) != "#RETURN"
    sock.close()
    grown = peak_memory(server.pid) - before
    assert grown < 64 << 20, f"a 7-byte request made the server take {grown >> 20} MB"
    assert_still_serving(server, 1)


# -- 2. keys --------------------------------------------------------------------------------


def test_200_wrong_keys_are_refused_and_leave_nothing_behind(server: ServerProcess) -> None:
    right = key_of(server)
    good = get_shared_state(start=False)
    good["n"] = 0
    before = resources(server.pid)
    wrong_keys = [
        right[:-1] + bytes([right[-1] ^ 1]),  # one bit off
        right + b"0",
        right.upper(),
        bytes.fromhex(right.decode()),  # the same key, decoded
        WRONG_KEY,
    ]
    for attempt in range(200):
        key = (
            wrong_keys[attempt % len(wrong_keys)] if attempt < 20 else os.urandom(16 + attempt % 48)
        )
        with pytest.raises(AuthenticationFailed, match="different keys") as raised:
            get_shared_state(authkey=key, start=False, timeout=5)
        assert server.address in str(raised.value)
        if attempt % 20 == 0:
            assert good.incr("n") == attempt // 20 + 1, "the right-key client was disturbed"
    wait_until(lambda: server.log().count("it used a wrong key") == 200)
    wait_for_no_growth(server.pid, before)
    assert good.incr("n") == 11
    assert_still_serving(server, 200)


@pytest.mark.parametrize("empty", [b"", ""], ids=["bytes", "str"])
def test_an_empty_key_argument_is_refused(server: ServerProcess, empty: bytes | str) -> None:
    with pytest.raises(ConfigError, match="at least 16") as raised:
        get_shared_state(authkey=empty, start=False)
    assert "get_shared_state(authkey=...)" in str(raised.value)
    assert_still_serving(server, 1)


def test_an_empty_authkey_variable_never_means_an_empty_key(
    workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An empty SHAREDSTATE_AUTHKEY counts as unset, like every empty setting: the server
    # falls back to its generated key file, never to an empty (guessable) key.
    monkeypatch.setenv("SHAREDSTATE_AUTHKEY", "")
    state = get_shared_state()  # starts the server with that environment
    state["x"] = 1
    with open(str(state.address) + ".key", "rb") as file:
        assert len(file.read().strip()) == 64
    with pytest.raises(AuthenticationFailed):
        handshake(state.address, b"", 5, frozenset({os.getuid()}))  # an empty key: not let in
    assert state["x"] == 1


@pytest.mark.parametrize("content", ["", "\n", "   \n\t"], ids=["empty", "newline", "blanks"])
def test_an_empty_key_file_is_refused_by_server_and_clients(
    workdir: str, address: str, content: str
) -> None:
    os.makedirs(os.path.dirname(address), mode=0o700)
    key_file = address + ".key"
    with open(key_file, "w") as file:
        file.write(content)
    os.chmod(key_file, 0o600)
    result = run_cli("serve", "--detach", timeout=30)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("error: ")
    assert f"key file {key_file} is empty" in result.stderr
    assert "Traceback" not in result.stderr
    with pytest.raises(ConfigError, match="is empty"):
        get_shared_state(start=True)
    no_server_left(workdir)
    with open(key_file) as file:
        assert file.read() == content, "the key file is left alone"


def test_a_key_file_shorter_than_16_bytes_is_refused(
    workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SHAREDSTATE_AUTHKEY="abc" is refused; the same key in a file must be too.
    key_file = os.path.join(workdir, "short.key")
    with open(key_file, "w") as file:
        file.write("abc\n")
    os.chmod(key_file, 0o600)
    monkeypatch.setenv("SHAREDSTATE_AUTHKEY_FILE", key_file)
    result = run_cli("serve", "--detach", timeout=30)
    assert result.returncode == 1, "a server started with a 3-byte key"
    assert "at least 16" in result.stderr
    with pytest.raises(ConfigError, match="at least 16"):
        get_shared_state(start=False)


def test_a_key_file_that_is_a_directory_is_a_clear_error(
    workdir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_dir = os.path.join(workdir, "keys")
    os.mkdir(key_dir, 0o700)
    monkeypatch.setenv("SHAREDSTATE_AUTHKEY_FILE", key_dir)
    with pytest.raises(ConfigError) as raised:
        get_shared_state(start=True)
    assert key_dir in str(raised.value)
    result = run_cli("serve", "--detach", timeout=30)
    assert result.returncode == 1
    assert key_dir in result.stderr, "the message names the file, not a descriptor number"


def test_key_files_others_can_read_are_refused_where_test_security_does_not_look(
    workdir: str, address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # test_security covers: a client and the default key file (0644) of a running server,
    # and `serve --authkey-file` (0640). Here: a client's explicit key file, and the
    # default key file before any server runs, for a client that may start one and for
    # `serve`.
    explicit = os.path.join(workdir, "app.key")
    with open(explicit, "w") as file:
        file.write("k" * 40)
    os.chmod(explicit, 0o640)
    monkeypatch.setenv("SHAREDSTATE_AUTHKEY_FILE", explicit)
    with pytest.raises(InsecurePermissions, match=f"chmod 600 {explicit}"):
        get_shared_state(start=True)
    monkeypatch.delenv("SHAREDSTATE_AUTHKEY_FILE")

    os.makedirs(os.path.dirname(address), mode=0o700)
    default = address + ".key"
    with open(default, "w") as file:
        file.write("k" * 40)
    os.chmod(default, 0o604)  # readable by the world, not by the group
    with pytest.raises(InsecurePermissions, match=f"chmod 600 {default}"):
        get_shared_state(start=True)
    result = run_cli("serve", "--detach", timeout=30)
    assert result.returncode == 1
    assert f"chmod 600 {default}" in result.stderr.splitlines()[-1]
    no_server_left(workdir)
    assert stat.S_IMODE(os.stat(explicit).st_mode) == 0o640, "modes are never changed for you"
    assert stat.S_IMODE(os.stat(default).st_mode) == 0o604


# -- 3. values ------------------------------------------------------------------------------


def _generator() -> Iterator[int]:
    yield 1


def _unpicklable_values() -> list[tuple[str, Any]]:
    return [
        ("function", lambda: None),
        ("socket", socket.socket()),
        ("generator", _generator()),
        ("lock", threading.Lock()),
    ]


def _edit_writing(state: SharedState, key: str, value: Any) -> None:
    with state.edit(key) as edited:
        edited["u"] = value


def _writes_of(state: SharedState, value: Any) -> dict[str, Callable[[], Any]]:
    """Every way of sending ``value`` to the server."""
    return {
        "set": lambda: state.__setitem__("u", value),
        "setdefault": lambda: state.setdefault("u", value),
        "update": lambda: state.update(ok=1, u=value),
        "namespace": lambda: setattr(state.namespace, "u", value),
        "nested set": lambda: state["d"].__setitem__("u", value),
        "nested append": lambda: state["l"].append(value),
        "namespace nested set": lambda: state.namespace.box.__setitem__("u", value),
        "edit default": lambda: state.edit("new", default=value).__enter__(),
    }


def test_unpicklable_values_are_refused_by_every_write(server: ServerProcess) -> None:
    state = get_shared_state(start=False)
    state["d"] = {"a": 1}
    state["l"] = [1]
    state.namespace.box = {}
    problems = []
    tried = 0
    for kind, value in _unpicklable_values():
        writes = _writes_of(state, value)
        tried += len(writes)
        found = refusal_problems(writes, ValueNotPicklable, f"can't store {kind} value", "state")
        # An edit stores the edited dict, which holds the value.
        edit = {"edit": functools.partial(_edit_writing, state, "d", value)}
        found += refusal_problems(edit, ValueNotPicklable, "can't store dict value at state['d']")
        problems += [f"{kind} {problem}" for problem in found]
        tried += 1
        if isinstance(value, socket.socket):
            value.close()
    assert not problems, "\n".join(problems)
    assert state.to_dict() == {"d": {"a": 1}, "l": [1]}, "nothing was half-written"
    assert state.namespace.to_dict() == {"box": {}}
    with state.edit("d", timeout=1) as edited:  # the failed edits were released
        edited["a"] = 2
    assert state["d"] == {"a": 2}
    assert_still_serving(server, tried)


def _read_without_the_module(library: str) -> dict[str, str]:
    """In a process that can't import client_models: what reading each key gives."""
    sys.path.remove(library)
    sys.modules.pop("client_models", None)
    state = fresh_state()
    results = {}
    for key in ("grid", "plain"):
        try:
            results[key] = repr(state[key])
        except SharedStateError as error:
            results[key] = f"{type(error).__name__}: {error}"
    return results


def test_values_the_server_cannot_unpickle_are_refused_where_it_must(
    server: ServerProcess, workdir: str
) -> None:
    library = os.path.join(workdir, "client_only")
    write_client_only_module(library)
    sys.path.insert(0, library)
    try:
        import client_models  # type: ignore[import-not-found]

        state = get_shared_state(start=False)
        state["grid"] = client_models.Grid([1, 2])  # kept pickled: fine
        state["plain"] = {"a": 1}
        state["list"] = [1]
        state.namespace.box = {}
        grid = client_models.Grid([3])
        nested_writes = {
            "nested set": lambda: state["plain"].__setitem__("g", grid),
            "nested update": lambda: state["plain"].update(g=grid),
            "nested append": lambda: state["list"].append(grid),
            "namespace nested set": lambda: state.namespace.box.__setitem__("g", grid),
        }
        problems = refusal_problems(
            nested_writes, ValueNotLoadable, "client_models", "state.edit()"
        )
        problems += refusal_problems(
            {"incr": lambda: state.incr("grid")}, ValueNotLoadable, "state['grid']"
        )
        problems += refusal_problems(  # names the value plainly, and where it was going
            {"nested set": lambda: state["plain"].__setitem__("g", grid)},
            ValueNotLoadable,
            "the value passed to __setitem__() on state['plain'] can't be unpickled",
        )
        assert not problems, "\n".join(problems)
        assert state["plain"] == {"a": 1}
        assert state["list"] == [1]
        assert state["grid"].cells == [1, 2]
        with state.edit("plain") as plain:  # the way out the message names
            plain["g"] = grid
        assert state["plain"]["g"].cells == [3]

        readers = run_in_processes(_read_without_the_module, [(library,)])
        assert readers[0]["grid"].startswith("ValueNotLoadable: the value at state['grid']")
        assert "importable" in readers[0]["grid"]
        assert readers[0]["plain"].startswith("ValueNotLoadable"), "it holds a Grid now"
    finally:
        sys.path.remove(library)
        sys.modules.pop("client_models", None)
    assert_still_serving(server, len(nested_writes) + 1)


def nested_list(depth: int, *innermost: Any) -> list[Any]:
    """``[[[...[*innermost]...]]]``, ``depth`` lists around the innermost one."""
    value = list(innermost)
    for _ in range(depth):
        value = [value]
    return value


def innermost_view(view: Any, depth: int) -> Any:
    for _ in range(depth):
        view = view[0]
    return view


def test_a_value_nested_too_deep_to_pickle_is_refused_and_a_deep_one_round_trips(
    server: ServerProcess,
) -> None:
    state = get_shared_state(start=False)
    state["d"] = {}
    state["l"] = []
    too_deep = nested_list(100_000)
    writes = {
        "set": lambda: state.__setitem__("deep", too_deep),
        "update": lambda: state.update(deep=too_deep),
        "namespace": lambda: setattr(state.namespace, "deep", too_deep),
        "nested set": lambda: state["d"].__setitem__("deep", too_deep),
        "nested append": lambda: state["l"].append(too_deep),
    }
    problems = refusal_problems(writes, ValueNotPicklable, "recursion", "state")
    assert not problems, "\n".join(problems)
    assert "deep" not in state

    # 200 levels: well within what pickle handles (CPython 3.11 fails near 500).
    state["deep"] = nested_list(200)
    assert state.to_dict()["deep"] == nested_list(200)
    innermost_view(state["deep"], 200).append(1)
    assert state["deep"] == nested_list(200, 1)
    assert_still_serving(server, len(writes))


def test_nested_writes_cannot_build_a_value_the_server_cannot_send(
    server: ServerProcess,
) -> None:
    # Each write is fine on its own (300 levels), but together they make 600: deeper
    # than the server can pickle when anyone reads the key, the whole state, or a snapshot.
    state = get_shared_state(start=False)
    state["deep"] = nested_list(300)
    error = outcome(lambda: innermost_view(state["deep"], 300).append(nested_list(300)))
    assert error is None or (
        isinstance(error, SharedStateError) and not isinstance(error, ServerError)
    ), f"a raw or unexpected failure: {error!r}"
    other = fresh_state()
    other["other"] = 1
    assert other.to_dict()["other"] == 1, "one key must not make the whole state unreadable"
    assert other.get_many(["other"]) == {"other": 1}
    if error is None:
        assert isinstance(other["deep"], list)


def test_a_key_nested_too_deep_is_refused_and_a_moderate_one_works(
    server: ServerProcess,
) -> None:
    state = get_shared_state(start=False)
    deep_key: tuple[Any, ...] = ()
    for _ in range(100_000):
        deep_key = (deep_key,)
    operations = {
        "set": lambda: state.__setitem__(deep_key, 1),
        "get": lambda: state[deep_key],
        "in": lambda: deep_key in state,
        "incr": lambda: state.incr(deep_key),
    }
    problems = refusal_problems(operations, InvalidKey, "key")
    assert not problems, "\n".join(problems)
    moderate: tuple[Any, ...] = ("user",)
    for _ in range(50):
        moderate = (moderate, 1)
    state[moderate] = "fine"
    assert state[moderate] == "fine"
    assert_still_serving(server, len(operations))


# -- 4. keys and paths ----------------------------------------------------------------------


def _edit_key(state: SharedState, key: Any) -> None:
    with state.edit(key, default=0):
        pass


def _uses_of(state: SharedState, cfg: Any, key: Any) -> dict[str, Callable[[], Any]]:
    """Every operation that takes a key, on the state and on a nested dict."""
    return {
        "get": lambda: state[key],
        "get()": lambda: state.get(key),
        "set": lambda: state.__setitem__(key, 1),
        "del": lambda: state.__delitem__(key),
        "in": lambda: key in state,
        "pop": lambda: state.pop(key, None),
        "setdefault": lambda: state.setdefault(key, 1),
        "incr": lambda: state.incr(key),
        "edit": lambda: _edit_key(state, key),
        "update": lambda: state.update([(key, 1)]),
        "get_many": lambda: state.get_many([key]),
        "delete_many": lambda: state.delete_many([key]),
        "view get": lambda: cfg[key],
        "view get()": lambda: cfg.get(key),
        "view in": lambda: key in cfg,
        "view set": lambda: cfg.__setitem__(key, 1),
        "view del": lambda: cfg.__delitem__(key),
        "view pop": lambda: cfg.pop(key, None),
        "view setdefault": lambda: cfg.setdefault(key, 1),
        "view incr": lambda: cfg.incr(key),
        "view update": lambda: cfg.update([(key, 1)]),
    }


def test_unhashable_keys_are_refused_by_every_operation(server: ServerProcess) -> None:
    state = get_shared_state(start=False)
    state["cfg"] = {"a": 1}
    problems = []
    tried = 0
    for key in (["x"], {"a": 1}, {1}, ("ok", [1])):
        uses = _uses_of(state, state["cfg"], key)
        tried += len(uses)
        found = refusal_problems(uses, InvalidKey, "keys must be")
        problems += [f"{type(key).__name__} key, {problem}" for problem in found]
    assert not problems, "\n".join(problems)
    assert state.to_dict() == {"cfg": {"a": 1}}
    assert_still_serving(server, tried)


def test_paths_into_missing_keys_or_non_containers_are_clear(server: ServerProcess) -> None:
    state = get_shared_state(start=False)
    state["cfg"] = {"db": {"port": 1}, "name": "text", "list": [1, "two"]}
    stale = state["cfg"]  # views read from this copy, and write through paths
    state["cfg"]["db"] = 5
    with pytest.raises(WrongType, match=r"state\['cfg'\]\['db'\] is a int.*state\.edit\(\)"):
        stale["db"]["port"] = 2
    del state["cfg"]["db"]
    with pytest.raises(KeyNotFound, match=r"'db' not found in state\['cfg'\]"):
        stale["db"]["port"] = 2
    with pytest.raises(WrongType, match=r"state\['cfg'\]\['name'\] is a str, not a number"):
        state["cfg"].incr("name")
    with pytest.raises(WrongType, match=r"state\['cfg'\]\['list'\]\[1\] is a str, not a number"):
        state["cfg"]["list"].incr(1)
    for amount in ("1", True, None, [1]):
        with pytest.raises(WrongType, match="the amount to add is a"):
            state["cfg"].incr("n", amount)
        with pytest.raises(WrongType, match="the amount to add is a"):
            state.incr("n", amount)  # type: ignore[arg-type]
    with pytest.raises(WrongType, match=r"state\['cfg'\]\['list'\]"):
        state["cfg"]["list"]["x"] = 1
    state.namespace.n = {"inner": {}}
    stale_attribute = state.namespace.n
    state.namespace.n = 5
    with pytest.raises(WrongType, match=r"state\.namespace\.n is a int"):
        stale_attribute["inner"]["x"] = 1
    state["cfg"] = "replaced by a string"
    with pytest.raises(WrongType, match=r"state\['cfg'\] is a str"):
        stale["name"] = "x"
    del state["cfg"]
    with pytest.raises(KeyNotFound, match="'cfg' not found in state"):
        stale["name"] = "x"
    assert_still_serving(server, 18)


def test_reading_a_list_with_a_str_index_is_a_clear_error(server: ServerProcess) -> None:
    # Writes with a bad index already say WrongType, naming the list; reads should too.
    state = get_shared_state(start=False)
    state["list"] = [1]
    with pytest.raises(WrongType, match=r"state\['list'\]"):
        state["list"]["x"]
    assert_still_serving(server, 1)


# -- 5. addresses ---------------------------------------------------------------------------


def _path_of_length(workdir: str, size: int) -> str:
    directory = os.path.join(workdir, "d" * (size - len(workdir) - len("/x/s.sock")) + "x")
    path = os.path.join(directory, "s.sock")
    assert len(os.fsencode(path)) == size
    return path


def test_a_socket_path_too_long_is_refused_by_serve_and_by_clients(
    workdir: str, server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = MAX_SOCKET_PATH_BYTES
    too_long = _path_of_length(workdir, limit + 1)
    result = run_cli("serve", "--address", too_long, timeout=30)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, f"one line, not: {result.stderr!r}"
    assert result.stderr.startswith("error: --address: socket path")
    assert f"{limit + 1} bytes long" in result.stderr
    assert f"at most {limit}" in result.stderr
    assert not os.path.exists(os.path.dirname(too_long)), "nothing is created for it"

    with pytest.raises(ConfigError, match=f"at most {limit}") as raised:
        get_shared_state(too_long)
    assert "get_shared_state(address=...)" in str(raised.value)
    monkeypatch.setenv("SHAREDSTATE_ADDRESS", too_long)
    with pytest.raises(ConfigError, match=f"at most {limit}") as raised:
        get_shared_state()
    assert "SHAREDSTATE_ADDRESS (environment)" in str(raised.value)

    longest = _path_of_length(workdir, limit)  # the limit itself works
    server_factory(address=longest).start()
    assert get_shared_state(longest, start=False).incr("n") == 1


class OtherProgram:
    """A plain socket server, not sharedstate, answering each connection its own way."""

    ANSWERS: ClassVar[dict[str, bytes | None]] = {
        "says nothing": None,
        "hangs up": b"",
        "sends a small message": frame(b"hello"),
        "sends a banner": b"SSH-2.0-OpenSSH_9.2\r\n",
    }

    def __init__(self, listener: socket.socket, behaviour: str) -> None:
        self.listener = listener
        self.answer = self.ANSWERS[behaviour]
        self.connections: list[socket.socket] = []
        listener.listen(16)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.connections.append(conn)
            if self.answer is not None:
                with contextlib.suppress(OSError):
                    conn.sendall(self.answer)
                    conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.listener.close()
        self.thread.join(5)
        for conn in self.connections:
            conn.close()


@pytest.fixture
def unix_program(request: pytest.FixtureRequest, address: str) -> Iterator[OtherProgram]:
    os.makedirs(os.path.dirname(address), mode=0o700)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    program = OtherProgram(listener, getattr(request, "param", "says nothing"))
    yield program
    program.close()


def still_listening(family: socket.AddressFamily, target: Any) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.settimeout(5)
        return probe.connect_ex(target) == 0


def client_errors(address: str, **kwargs: Any) -> list[BaseException | None]:
    """What get_shared_state gives, without and with permission to start a server."""
    return [
        outcome(lambda: get_shared_state(address, start=False, timeout=1, **kwargs)),
        outcome(lambda: get_shared_state(address, start=True, timeout=1, **kwargs)),
    ]


def test_a_client_refuses_an_address_where_another_program_listens(
    unix_program: OtherProgram, address: str, workdir: str
) -> None:
    # No key file: nothing says a sharedstate server is there, so don't say one is.
    inode = os.lstat(address).st_ino
    for error in client_errors(address):
        assert isinstance(error, SharedStateError), repr(error)
        assert address in str(error)
        assert "another program" in str(error), str(error)
    no_server_left(workdir)
    assert os.lstat(address).st_ino == inode, "the other program's socket was replaced"
    assert still_listening(socket.AF_UNIX, address)


@pytest.mark.parametrize("unix_program", list(OtherProgram.ANSWERS), indirect=True)
def test_a_client_refuses_another_program_at_an_address_sharedstate_used_before(
    unix_program: OtherProgram, address: str, workdir: str
) -> None:
    with open(os.open(address + ".key", os.O_WRONLY | os.O_CREAT, 0o600), "w") as file:
        file.write("k" * 64)  # left by a sharedstate server that used this address
    inode = os.lstat(address).st_ino
    for error in client_errors(address):
        assert isinstance(error, SharedStateError), repr(error)
        assert address in str(error)
    no_server_left(workdir)
    assert os.lstat(address).st_ino == inode
    assert still_listening(socket.AF_UNIX, address)


def test_serve_leaves_the_unix_socket_of_another_program_alone(
    unix_program: OtherProgram, address: str
) -> None:
    inode = os.lstat(address).st_ino
    result = run_cli("serve", "--detach", timeout=30)
    assert result.returncode == 1
    assert f"another program is listening on {address}" in result.stderr.splitlines()[-1]
    assert os.lstat(address).st_ino == inode
    assert still_listening(socket.AF_UNIX, address)


def test_a_tcp_port_used_by_another_program_is_refused_and_left_alone(workdir: str) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    program = OtherProgram(listener, "says nothing")
    try:
        result = run_cli("serve", "--address", address, timeout=30)
        assert result.returncode == 1
        assert f"{address} is already in use" in result.stderr.splitlines()[-1]
        for error in client_errors(address):
            assert isinstance(error, SharedStateError), repr(error)
            assert address in str(error)
        no_server_left(workdir)
        assert still_listening(socket.AF_INET, listener.getsockname())
    finally:
        program.close()
