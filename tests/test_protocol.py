"""The protocol table is the one list of operations: the client calls only what it lists,
the server serves exactly what it lists, and the framing is the one the client speaks."""

from __future__ import annotations

import ast
import pathlib
import socket
import subprocess
import sys
from multiprocessing.connection import Connection

import pytest

import sharedstate
from sharedstate import protocol
from sharedstate.server.state_server import StateServer
from sharedstate.server.store import Store

PACKAGE = pathlib.Path(sharedstate.__file__).parent
CLIENT_DIRS = [PACKAGE / "client", PACKAGE / "aio"]


def operations_called_by_the_client() -> dict[str, list[str]]:
    """Every operation the clients name, by name: each ``Call("name", ...)`` (the commands
    both clients run) and ``<x>.call("name", ...)`` / ``<x>._call("name", ...)``.

    The one place that sends a ``Call`` made elsewhere passes ``call.method`` on; any
    other computed name fails here.
    """
    found: dict[str, list[str]] = {}
    for path in sorted(path for folder in CLIENT_DIRS for path in folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            command = isinstance(func, ast.Name) and func.id == "Call"
            call = isinstance(func, ast.Attribute) and func.attr in ("call", "_call")
            if not (command or call):
                continue
            first = node.args[0]
            if call and isinstance(first, ast.Attribute) and first.attr == "method":
                continue  # sends a Call made by a command: checked where it is made
            literal = isinstance(first, ast.Constant) and isinstance(first.value, str)
            assert literal, (
                f"{path.name}:{node.lineno} names an operation by a computed value; "
                "name it literally, so this test can check it against the protocol table"
            )
            assert isinstance(first, ast.Constant)
            found.setdefault(first.value, []).append(f"{path.name}:{node.lineno}")
    return found


def test_the_client_calls_only_operations_in_the_protocol_table() -> None:
    called = operations_called_by_the_client()
    assert len(called) >= 20, f"the scan found too few calls to be looking right: {called}"
    unknown = {name: where for name, where in called.items() if name not in protocol.OPERATIONS}
    assert not unknown, f"operations the protocol table lacks: {unknown}"


def test_the_server_serves_exactly_the_operations_in_the_table() -> None:
    assert frozenset(protocol.OPERATIONS) == Store.EXPOSED
    for name in protocol.OPERATIONS:
        assert callable(getattr(Store, name, None)), f"Store has no method {name}"


def test_operations_that_wait_are_the_reservations_that_take_something() -> None:
    waiting = {name for name, op in protocol.OPERATIONS.items() if op.may_wait}
    assert waiting == {"lock_acquire", "edit_begin"}
    assert all(protocol.OPERATIONS[name].kind is protocol.Kind.RESERVATION for name in waiting)


def test_the_server_functions_are_the_ones_the_protocol_names() -> None:
    # StateServer builds its table (self._functions) in __init__; read it from the source
    # rather than start a server, so a function added on one side only is caught.
    path = pathlib.Path(sys.modules[StateServer.__module__].__file__ or "")
    tables = [
        node.value
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.AnnAssign)
        and isinstance(node.target, ast.Attribute)
        and node.target.attr == "_functions"
        and isinstance(node.value, ast.Dict)
    ]
    assert len(tables) == 1, "StateServer's self._functions table was not found"
    names = {key.value for key in tables[0].keys if isinstance(key, ast.Constant)}
    assert names == protocol.SERVER_FUNCTIONS


@pytest.mark.parametrize("size", [0, 1, 100, 70_000])
def test_the_framing_is_the_one_the_clients_connection_speaks(size: int) -> None:
    left, right = socket.socketpair()
    with left, right:
        sender = Connection(left.detach())
        payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        sender.send_bytes(payload)
        received = bytearray()
        right.settimeout(5)
        while (message := protocol.take_message(received, 1 << 20)) is None:
            received += right.recv(1 << 16)
        assert message == payload
        assert received == b""
        right.sendall(protocol.frame_header(len(payload)) + payload)
        assert sender.recv_bytes() == payload
        sender.close()


def test_a_long_frame_header_says_minus_one_then_the_length() -> None:
    header = protocol.frame_header(1 << 32)
    assert protocol.LENGTH.unpack_from(header) == (-1,)
    assert protocol.LONG_LENGTH.unpack_from(header, protocol.LENGTH.size) == (1 << 32,)


def test_a_frame_longer_than_the_limit_is_refused() -> None:
    inbox = bytearray(protocol.frame_header(1000) + b"x" * 10)
    with pytest.raises(ValueError, match="bad message length 1000"):
        protocol.take_message(inbox, 999)


def test_a_reply_that_cannot_be_pickled_becomes_unserializable() -> None:
    kind, text = protocol.load_reply(protocol.dump_reply((protocol.RETURN, lambda: None)))
    assert kind == protocol.UNSERIALIZABLE
    assert "lambda" in text


def test_requests_round_trip_and_junk_is_not_a_request() -> None:
    request = protocol.dump_request(protocol.STORE, "incr", ("hits", 1), 7)
    assert protocol.load_request(request) == (protocol.STORE, "incr", ("hits", 1), 7)
    for junk in (b"", b"x", b"\x80\x01", protocol.dump_reply((protocol.RETURN, 1))):
        with pytest.raises(ValueError, match="not a"):
            protocol.load_request(junk)


def test_importing_sharedstate_loads_no_server_or_persistence_module() -> None:
    code = (
        "import sys, sharedstate\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('sharedstate.server', "
        "'sharedstate.persistence')) or m == 'multiprocessing.managers')\n"
        "print(','.join(bad))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    ).stdout.strip()
    assert loaded == "", f"import sharedstate loaded server-side modules: {loaded}"
