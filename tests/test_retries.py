"""A call cut off between the server applying it and the client reading the reply.

The client can't know whether such a write happened. It sends it again, once, with the
number it had in the thread's session, and the server, which remembers the last write
of each session, answers it again instead of applying it twice. Reads are simply sent
again. Across a server crash nothing is retried: the new server can't know.
The server under test hangs up on, or dies instead of answering, chosen calls
(``SHAREDSTATE_TEST_CUT_REPLIES``, see tests/support/faults.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from sharedstate import ConnectionLost, LockLost, SharedState, get_shared_state
from sharedstate.server.sessions import Session, Sessions

from .support.clients import fresh_state
from .support.faults import CUT_ENV
from .support.servers import ServerFactory, ServerProcess

# cutting_server(rules, *serve_args): a started server that cuts replies by rules.
CuttingServer = Callable[..., ServerProcess]


@pytest.fixture
def cutting_server(server_factory: ServerFactory, monkeypatch: pytest.MonkeyPatch) -> CuttingServer:
    def start(rules: str, *args: str) -> ServerProcess:
        monkeypatch.setenv(CUT_ENV, rules)
        return server_factory(*args, faults="").start()

    return start


def test_an_incr_cut_off_before_its_reply_is_applied_once(cutting_server: CuttingServer) -> None:
    server = cutting_server("cut:incr:3")
    state = get_shared_state(start=False)
    assert [state.incr("n") for _ in range(5)] == [1, 2, 3, 4, 5]
    assert fresh_state()["n"] == 5
    server.wait_for_log("injected fault: cut instead of replying")
    server.wait_for_log("retried a write the server had applied; answered it again")


@pytest.mark.parametrize(
    ("method", "write", "expected"),
    [
        ("nested", lambda s: s["list"].append("once"), {"list": ["once"], "gone": 1}),
        ("pop", lambda s: s.pop("gone"), {"list": []}),
        ("update", lambda s: s.update(gone=2, extra=3), {"list": [], "gone": 2, "extra": 3}),
        ("delete_many", lambda s: s.delete_many(["gone", "list"]), {}),
        ("setdefault", lambda s: s.setdefault("new", 7), {"list": [], "gone": 1, "new": 7}),
    ],
    ids=["append", "pop", "update", "delete_many", "setdefault"],
)
def test_every_kind_of_write_cut_off_is_applied_once_and_answered_right(
    cutting_server: CuttingServer,
    method: str,
    write: Callable[[SharedState], Any],
    expected: dict[str, Any],
) -> None:
    cutting_server(f"cut:{method}:1")
    state = get_shared_state(start=False)
    state.update({"list": [], "gone": 1})
    result = write(state)
    assert fresh_state().to_dict() == expected
    if method == "pop":
        assert result == 1, "the retry gets the reply of the write that was applied"
    if method == "delete_many":
        assert result == 2
    if method == "setdefault":
        assert result == 7


def test_a_read_cut_off_is_sent_again(cutting_server: CuttingServer) -> None:
    server = cutting_server("cut:lookup:2")
    state = get_shared_state(start=False)
    state["x"] = "value"
    assert state["x"] == "value"
    assert state["x"] == "value"
    server.wait_for_log("injected fault")


def test_a_write_cut_off_under_the_lock_is_not_retried_but_lock_lost(
    cutting_server: CuttingServer,
) -> None:
    cutting_server("cut:set:1")
    state = get_shared_state(start=False)
    with pytest.raises(LockLost, match="broke during set"), state.lock:
        state["x"] = 1  # applied, but its connection (and so the lock) is gone
    assert fresh_state()["x"] == 1


def test_a_write_cut_off_by_a_crash_is_not_retried_on_the_next_server(
    cutting_server: CuttingServer,
    workdir: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    snapshot = os.path.join(workdir, "state.snap")
    monkeypatch.setenv("SHAREDSTATE_SNAPSHOT", snapshot)
    monkeypatch.setenv("SHAREDSTATE_FSYNC", "always")
    server = cutting_server("die:incr:3")
    state = get_shared_state()  # start=True: the next call starts a new server
    assert [state.incr("n") for _ in range(2)] == [1, 2]
    with pytest.raises(ConnectionLost, match="may or may not have taken effect"):
        state.incr("n")  # journaled, then the server died before replying
    assert server.wait() == 1
    assert state.incr("n") == 4, "the third incr was applied once, and recovered"
    assert fresh_state(start=True)["n"] == 4


# -- the server's memory of sessions ------------------------------------------------------


def test_a_session_resumed_after_it_was_forgotten_is_reported_unknown() -> None:
    sessions = Sessions()
    session, known = sessions.attach(b"a" * 16, resume=False)
    assert known
    session.remember(1, ("#RETURN", None), None)
    sessions.detach(session)
    again, known = sessions.attach(b"a" * 16, resume=True)
    assert known
    assert again is session
    assert again.last_rid == 1
    _, known = sessions.attach(b"b" * 16, resume=True)
    assert not known, "a session the server never saw (or forgot) is not known"


def test_departed_sessions_are_forgotten_by_age_count_and_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sharedstate.server.sessions as module

    monkeypatch.setattr(module, "MAX_KEPT", 3)
    monkeypatch.setattr(module, "MAX_KEPT_BYTES", 100)
    sessions = Sessions()
    for index in range(5):
        session, _ = sessions.attach(bytes([index]) * 16, resume=False)
        session.remember(1, ("#RETURN", b""), None)
        sessions.detach(session)
    assert len(sessions) == 3, "only the newest MAX_KEPT are kept"
    big, _ = sessions.attach(b"z" * 16, resume=False)
    big.remember(1, ("#RETURN", b"x" * 150), None)
    sessions.detach(big)
    assert len(sessions) == 0, "one reply over MAX_KEPT_BYTES pushes everything out"
    monkeypatch.setattr(module, "KEEP_SECONDS", -1.0)  # every departed session is too old
    old, _ = sessions.attach(b"o" * 16, resume=False)
    sessions.detach(old)
    _, known = sessions.attach(b"o" * 16, resume=True)
    assert not known
    assert isinstance(old, Session)
