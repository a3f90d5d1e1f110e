"""The asyncio client: every operation of the sync API, with the same meaning and errors.

Each test runs on asyncio's loop and on uvloop's, against a real server, and where it
matters checks what the sync client sees of the same state.
"""

from __future__ import annotations

import ast
import asyncio
import os
import pickle
from typing import Any

import pytest

from sharedstate import (
    AttributeNotFound,
    Conflict,
    InvalidArgument,
    InvalidKey,
    KeyNotFound,
    LeaseExpired,
    ServerNotRunning,
    Timeout,
    ValueNotPicklable,
    ValueTooLarge,
    WrongEventLoop,
    WrongType,
    get_shared_state,
)
from sharedstate.aio import AsyncSharedState
from sharedstate.aio import get_shared_state as aio_state

from .support.backends import LOCAL, NO_SERVER_THERE, WRITES_DONT_WAIT_FOR_EDITS
from .support.loops import LOOPS, run_on
from .support.processes import REPO_ROOT
from .support.servers import ServerProcess, server_info

pytestmark = [pytest.mark.backends, pytest.mark.parametrize("loop", LOOPS)]


def test_dict_operations_mean_what_the_sync_clients_do(server: ServerProcess, loop: str) -> None:
    async def main() -> None:
        state = await aio_state(start=False)
        await state.set("a", 1)
        assert await state.get("a") == 1
        assert await state.getitem("a") == 1
        assert await state.get("missing") is None
        assert await state.get("missing", "default") == "default"
        with pytest.raises(KeyNotFound):
            await state.getitem("missing")
        assert await state.contains("a")
        assert not await state.contains("missing")
        assert await state.setdefault("a", 5) == 1
        assert await state.setdefault("b", [1, 2]) == [1, 2]
        assert await state.len() == 2
        assert sorted(await state.keys()) == ["a", "b"]
        assert sorted(await state.items()) == [("a", 1), ("b", [1, 2])]
        assert sorted(map(str, await state.values())) == ["1", "[1, 2]"]
        await state.update({"c": 3}, d=4)
        assert await state.to_dict() == {"a": 1, "b": [1, 2], "c": 3, "d": 4}
        assert await state.pop("c") == 3
        assert await state.pop("c", None) is None
        with pytest.raises(KeyNotFound):
            await state.pop("c")
        await state.delete("d")
        with pytest.raises(KeyNotFound):
            await state.delete("d")
        key, value = await state.popitem()
        assert (key, value) in [("a", 1), ("b", [1, 2])]
        await state.clear()
        assert await state.len() == 0
        with pytest.raises(KeyNotFound):
            await state.popitem()

    run_on(loop, main)


def test_values_come_back_as_plain_copies_that_never_write_back(
    server: ServerProcess, loop: str
) -> None:
    async def main() -> None:
        state = await aio_state(start=False)
        await state.set("cfg", {"db": {"port": 1}})
        cfg = await state.get("cfg")
        assert type(cfg) is dict
        cfg["db"]["port"] = 2
        assert await state.get("cfg") == {"db": {"port": 1}}

    run_on(loop, main)


def test_sync_and_async_clients_see_each_others_writes(server: ServerProcess, loop: str) -> None:
    sync = get_shared_state(start=False)

    async def main() -> None:
        state = await aio_state(start=False)
        await state.set("from async", [1])
        assert sync["from async"] == [1]
        sync["from sync"] = {"x": 1}
        assert await state.get("from sync") == {"x": 1}
        sync.incr("n")
        assert await state.incr("n") == 2
        assert sync["n"] == 2
        await state.namespace.set("mode", "fast")
        assert sync.namespace.mode == "fast"

    run_on(loop, main)


def test_incr_add_and_expiry(server: ServerProcess, loop: str) -> None:
    async def main() -> None:
        state = await aio_state(start=False)
        assert await state.incr("n") == 1
        assert await state.incr("n", 5) == 6
        assert await state.incr("n", -1.5) == 4.5
        assert await state.add("claim", "first")
        assert not await state.add("claim", "second")
        assert await state.get("claim") == "first"
        assert await state.ttl("claim") is None
        assert await state.expire("claim", 100)
        assert 99 < (await state.ttl("claim") or 0) <= 100
        assert await state.persist("claim")
        assert not await state.persist("claim")
        assert not await state.expire("missing", 10)
        with pytest.raises(KeyNotFound):
            await state.ttl("missing")
        await state.set("short", 1, ttl=0.05)
        assert await state.incr("window", ttl=0.05) == 1
        await asyncio.sleep(0.2)
        assert not await state.contains("short")
        assert await state.incr("window", ttl=0.05) == 1  # a new window
        assert await state.expire("window", 0)  # 0 deletes, as Redis does
        assert not await state.contains("window")
        with pytest.raises(InvalidArgument):
            await state.set("x", 1, ttl=-1)
        with pytest.raises(InvalidArgument):
            await state.incr("x", ttl=float("nan"))

    run_on(loop, main)


def test_batches_are_one_atomic_call(server: ServerProcess, loop: str) -> None:
    async def main() -> None:
        state = await aio_state(start=False)
        await state.set_many({"a": 1, "b": 2, "c": 3})
        assert await state.get_many(["a", "c", "missing"]) == {"a": 1, "c": 3}
        assert await state.delete_many(["a", "b", "missing"]) == 2
        await state.set_many({"t": 1}, ttl=100)
        assert await state.ttl("t") is not None
        assert await state.to_dict() == {"c": 3, "t": 1}

    run_on(loop, main)


def test_writes_inside_values_by_path_take_effect(server: ServerProcess, loop: str) -> None:
    sync = get_shared_state(start=False)

    async def main() -> None:
        state = await aio_state(start=False)
        await state.set("cfg", {"db": {"port": 5432}, "users": [{"name": "ann"}]})
        await state.set_in(("cfg", "db", "port"), 5433)
        await state.set_in(("cfg", "users", 0, "name"), "bob")
        await state.update_in(("cfg", "db"), host="db2")
        await state.append_in(("cfg", "users"), {"name": "cy"})
        await state.extend_in(("cfg", "users"), [{"name": "di"}])
        assert await state.incr_in(("cfg", "db", "retries")) == 1
        assert await state.incr_in(("cfg", "db", "retries"), 2) == 3
        assert await state.get_in(("cfg", "db", "port")) == 5433
        assert await state.get_in(("cfg", "users", 1, "name")) == "cy"
        assert await state.get_in(("cfg", "nope", "x"), "dflt") == "dflt"
        assert await state.get_in(("cfg", "users", 9), "dflt") == "dflt"
        assert await state.get_in(("missing", "x")) is None
        assert await state.pop_in(("cfg", "db", "host")) == "db2"
        assert await state.pop_in(("cfg", "db", "host"), "gone") == "gone"
        await state.delete_in(("cfg", "users", 2))
        with pytest.raises(KeyNotFound):
            await state.delete_in(("cfg", "nope", "x"))
        with pytest.raises(WrongType):
            await state.get_in(("cfg", "db", "port", "x"))
        with pytest.raises(InvalidArgument, match="at least 2 steps"):
            await state.set_in(("cfg",), 1)
        with pytest.raises(InvalidArgument, match="a path is a tuple"):
            await state.set_in("cfg", 1)
        with pytest.raises(InvalidKey):
            await state.set_in(([], "x"), 1)

    run_on(loop, main)
    assert sync["cfg"] == {
        "db": {"port": 5433, "retries": 3},
        "users": [{"name": "bob"}, {"name": "cy"}],
    }
    sync.set_in(("cfg", "db", "port"), 1)  # the sync client has the same path operations
    sync.append_in(("cfg", "users"), {"name": "ed"})
    assert sync.get_in(("cfg", "db", "port")) == 1
    assert sync.incr_in(("cfg", "db", "retries")) == 4
    assert sync.get_in(("cfg", "users", 2, "name")) == "ed"


def test_namespace(server: ServerProcess, loop: str) -> None:
    async def main() -> None:
        state = await aio_state(start=False)
        await state.namespace.set("threshold", 0.5)
        assert await state.namespace.get("threshold") == 0.5
        assert await state.namespace.to_dict() == {"threshold": 0.5}
        await state.namespace.delete("threshold")
        with pytest.raises(AttributeNotFound):
            await state.namespace.get("threshold")
        assert await state.namespace.get("threshold", None) is None
        with pytest.raises(AttributeNotFound):
            await state.namespace.delete("threshold")

    run_on(loop, main)


def test_bad_input_gets_the_sync_clients_errors_and_nothing_is_sent(
    server: ServerProcess, loop: str
) -> None:
    async def main() -> None:
        state = await aio_state(start=False)
        with pytest.raises(InvalidKey):
            await state.set(["a list"], 1)
        with pytest.raises(ValueNotPicklable, match="state\\['f'\\]"):
            await state.set("f", lambda: None)
        with pytest.raises(ValueNotPicklable):
            await state.set_in(("f", "x"), lambda: None)
        state.max_value_bytes = 1000
        with pytest.raises(ValueTooLarge, match="state\\['big'\\]"):
            await state.set("big", b"x" * 2000)
        assert await state.len() == 0
        await state.set("s", "text")
        with pytest.raises(WrongType):
            await state.incr("s")
        assert await state.get("s") == "text"  # the server kept serving

    run_on(loop, main)


def test_edit_writes_back_when_the_block_ends_and_nothing_when_it_raises(
    server: ServerProcess, loop: str, backend: str
) -> None:
    async def main() -> None:
        state = await aio_state(start=False)
        async with state.edit("cart", default=[]) as cart:
            cart.append("apple")
        assert await state.get("cart") == ["apple"]
        with pytest.raises(RuntimeError):  # noqa: PT012
            async with state.edit("cart") as cart:
                cart.append("pear")
                raise RuntimeError("changed my mind")
        assert await state.get("cart") == ["apple"]
        with pytest.raises(KeyNotFound):
            async with state.edit("missing"):
                pass
        async with state.edit("session", default={}, ttl=100) as session:
            session["user"] = "ann"
        assert 99 < (await state.ttl("session") or 0) <= 100
        with pytest.raises(InvalidArgument):
            async with state.edit("cart", ttl=0):
                pass
        if backend == LOCAL:  # the local server's own count
            assert server_info()["open_edits"] == 0

    run_on(loop, main)


def test_edits_of_one_key_from_many_tasks_never_lose_an_update(
    server: ServerProcess, loop: str
) -> None:
    async def main() -> None:
        state = await aio_state(start=False)

        async def add_one() -> None:
            async with state.edit("counts", default={"n": 0}) as counts:
                await asyncio.sleep(0)  # others run meanwhile, and wait for this edit
                counts["n"] += 1

        await asyncio.gather(*(add_one() for _ in range(50)))
        assert await state.get("counts") == {"n": 50}

    run_on(loop, main)


def test_the_lock_excludes_other_tasks_and_the_sync_client(
    server: ServerProcess, loop: str
) -> None:
    sync = get_shared_state(start=False)

    async def main() -> None:
        state = await aio_state(start=False)
        inside = 0
        most = 0

        async def critical() -> None:
            nonlocal inside, most
            async with state.lock:
                inside += 1
                most = max(most, inside)
                await asyncio.sleep(0.001)
                inside -= 1

        await asyncio.gather(*(critical() for _ in range(20)))
        assert most == 1
        async with state.lock.hold(timeout=5, lease=30):
            assert await state.lock.locked()
            assert not sync.lock.acquire(timeout=0.05)  # the sync client is excluded too
        assert not await state.lock.locked()
        assert sync.lock.acquire(timeout=1)
        try:
            with pytest.raises(Timeout, match="state.lock was held"):
                async with state.lock.hold(timeout=0.05):
                    pass
            assert not await state.lock.acquire(blocking=False)
        finally:
            sync.lock.release()

    run_on(loop, main)


def test_a_lapsed_lease_is_reported_when_the_block_ends(server: ServerProcess, loop: str) -> None:
    async def main() -> None:
        state = await aio_state(start=False)
        with pytest.raises(LeaseExpired):
            async with state.lock.hold(lease=0.05):
                await asyncio.sleep(0.5)
        async with state.lock.hold(timeout=2):  # and the lock is free again
            pass

    run_on(loop, main)


@pytest.mark.differs_on_redis(WRITES_DONT_WAIT_FOR_EDITS)
def test_calls_inside_a_lock_go_on_the_holders_connection(server: ServerProcess, loop: str) -> None:
    # The editor's own writes of the key it edits must not wait for its edit to end.
    async def main() -> None:
        state = await aio_state(start=False)
        await state.set("doc", {"v": 1})
        async with state.edit("doc") as doc:
            await asyncio.wait_for(state.set_in(("doc", "v"), 2), 5)
            doc["seen"] = await state.get("doc")
        assert await state.get("doc") == {"v": 1, "seen": {"v": 2}}

    run_on(loop, main)


def test_repeated_calls_return_the_same_state_and_concurrent_first_calls_connect_once(
    server: ServerProcess, loop: str, backend: str
) -> None:
    async def main() -> None:
        states = await asyncio.gather(*(aio_state(start=False) for _ in range(20)))
        assert all(state is states[0] for state in states)
        assert states[0].connections == 1
        if backend == LOCAL:  # the local server's own count
            assert len(server_info()["clients"]) == 1

    run_on(loop, main)


@pytest.mark.local_only(NO_SERVER_THERE)
def test_no_server_and_no_start_is_a_clear_error(loop: str) -> None:
    async def main() -> None:
        with pytest.raises(ServerNotRunning, match="sharedstate serve"):
            await aio_state(start=False)

    run_on(loop, main)


def test_the_state_can_not_be_pickled(server: ServerProcess, loop: str) -> None:
    async def main() -> None:
        state = await aio_state(start=False)
        with pytest.raises(TypeError, match="get_shared_state"):
            pickle.dumps(state)

    run_on(loop, main)


def test_export_restore_and_pickled(server: ServerProcess, loop: str) -> None:
    async def main() -> None:
        state: AsyncSharedState = await aio_state(start=False)
        await state.set("a", {"x": 1})
        await state.set("t", 1, ttl=100)
        await state.namespace.set("n", 2)
        contents = await state.export()
        assert pickle.loads(await state.pickled("a")) == {"x": 1}
        await state.clear()
        await state.restore(contents, replace=True)
        assert await state.to_dict() == {"a": {"x": 1}, "t": 1}
        assert await state.ttl("t") is not None
        assert await state.namespace.get("n") == 2

    run_on(loop, main)


def test_views_conflict_rules_are_the_sync_clients(server: ServerProcess, loop: str) -> None:
    # A path write lands where the path leads when it arrives: no expectation is sent,
    # so nothing conflicts (unlike a view's write through a list position).
    sync = get_shared_state(start=False)
    sync["users"] = [{"name": "ann"}, {"name": "bob"}]
    users: Any = sync["users"]

    async def main() -> None:
        state = await aio_state(start=False)
        await state.pop_in(("users", 0))
        await state.set_in(("users", 0, "name"), "BOB")

    run_on(loop, main)
    with pytest.raises(Conflict):
        users[0]["name"] = "ann2"  # the view read ann at position 0: that moved
    assert sync["users"] == [{"name": "BOB"}]


def test_a_state_used_in_another_event_loop_says_so(server: ServerProcess, loop: str) -> None:
    made: list[AsyncSharedState] = []

    async def first() -> None:
        made.append(await aio_state(start=False))
        await made[0].set("a", 1)

    run_on(loop, first)

    async def second() -> None:
        state = await aio_state(start=False)
        assert state is not made[0]  # each loop gets its own
        await state.get("a")

        def use_in_another_loop() -> None:
            with pytest.raises(WrongEventLoop, match="get_shared_state"):
                asyncio.run(state.get("a"))

        await asyncio.to_thread(use_in_another_loop)  # while this loop still runs
        assert await made[0].get("a") == 1  # its own loop is closed: it moves on
        await made[0].aclose()

    run_on(loop, second)


@pytest.mark.parametrize(
    ("document", "after"),
    [("README.md", "## Async apps"), ("docs/asyncio.md", "# asyncio")],
)
def test_the_docs_async_snippets_run_as_written(
    server: ServerProcess, loop: str, document: str, after: str
) -> None:
    with open(os.path.join(REPO_ROOT, document), encoding="utf-8") as file:
        text = file.read()
    start = text.index("```python\n", text.index(after)) + len("```python\n")
    snippet = text[start : text.index("```", start)]
    code = compile(snippet, document, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    namespace: dict[str, Any] = {}

    async def main() -> None:
        result = eval(code, namespace)  # noqa: S307 - our own docs
        if result is not None:
            await result

    run_on(loop, main)
    assert get_shared_state(start=False)["hits"] == 1
