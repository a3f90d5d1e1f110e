"""Redis restarted or killed under load, a wrong password, Redis not running.

The clients must see only sharedstate's errors (``ConnectionLost`` for a call cut off,
a ``SharedStateError`` subclass for Redis being away), reconnect by themselves, and
never return a wrong answer. To tell a wrong answer from data Redis forgot, the Redis
of these tests keeps an append-only file fsynced before each reply
(tests/support/durable_redis.py): everything acknowledged survives a restart, and
even SIGKILL, so the count after the fault lies between the acknowledged and the
attempted increments. No message ever shows the password.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time
import traceback
from typing import Any

import pytest

import sharedstate.aio
from sharedstate import get_shared_state
from sharedstate.errors import AuthenticationFailed, SharedStateError

from .support.durable_redis import DurableRedisServer
from .support.machines import unique_prefix
from .support.processes import fork_context, run_in_processes, wait_until
from .support.procfs import processes_mentioning
from .support.redis_servers import RedisServer, free_port

pytestmark = pytest.mark.fault

WORKERS = 4
CALLS_AFTER_FAULT = 20  # successful calls each worker makes on the same state afterwards


def work_through_fault(me: int, fault_done: Any, progress: Any) -> dict[str, Any]:
    """incr and set in a loop, on one state object, until well after the fault.

    Records what each call did: acknowledged increments (their values), attempted ones,
    acknowledged sets, and the errors. Any exception other than a SharedStateError
    escapes and fails the worker.
    """
    state = get_shared_state()
    acked: list[int] = []
    attempted = 0
    acked_sets: list[str] = []
    errors: dict[str, int] = {}
    messages: set[str] = set()
    after_fault = 0
    deadline = time.monotonic() + 40
    while after_fault < CALLS_AFTER_FAULT and time.monotonic() < deadline:
        fault_was_done = fault_done.is_set()
        number = attempted
        key = f"w{me}:{number}"
        try:
            attempted += 1
            acked.append(state.incr("count"))
            state[key] = number
            acked_sets.append(key)
        except SharedStateError as error:
            # Redis away is trouble with the connection, whatever the subclass says.
            name = type(error).__name__ if isinstance(error, ConnectionError) else "other"
            errors[name] = errors.get(name, 0) + 1
            messages.add("".join(traceback.format_exception(error)))
            time.sleep(0.01)  # Redis is away: don't spin
            continue
        after_fault += fault_was_done  # same state object, so it reconnected by itself
        with progress.get_lock():
            progress.value += 1
    return {
        "acked": acked,
        "attempted": attempted,
        "acked_sets": acked_sets,
        "errors": errors,
        "messages": sorted(messages)[:50],
        "after_fault": after_fault,
    }


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fault", ["restart", "sigkill"])
def test_redis_restarted_under_load_gives_no_wrong_answer(
    workdir: str, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    redis = DurableRedisServer(os.path.join(workdir, "redis")).start()
    try:
        monkeypatch.setenv("SHAREDSTATE_ADDRESS", redis.url())
        monkeypatch.setenv("SHAREDSTATE_PREFIX", unique_prefix())
        fault_done, progress = fork_context.Event(), fork_context.Value("i", 0)
        work = [(me, fault_done, progress) for me in range(WORKERS)]
        # A thread waits for the workers while this one makes the fault.
        with concurrent.futures.ThreadPoolExecutor(1) as waiter:
            running = waiter.submit(run_in_processes, work_through_fault, work, 55)
            try:
                wait_until(lambda: progress.value >= 200)  # under load
                if fault == "restart":
                    redis.restart()
                else:
                    redis.stop(kill=True)
                    redis.start()
            finally:
                fault_done.set()  # also on failure: the workers then finish on their own
            reports: list[dict[str, Any]] = running.result(timeout=58)
        acked = [value for report in reports for value in report["acked"]]
        attempted = sum(report["attempted"] for report in reports)
        count = get_shared_state()["count"]
        assert len(set(acked)) == len(acked), "one value returned by two increments"
        assert len(acked) <= max(acked) <= count <= attempted
        for report in reports:
            assert report["after_fault"] >= CALLS_AFTER_FAULT, report["errors"]
            assert "other" not in report["errors"], report["messages"]
            stored = get_shared_state().get_many(report["acked_sets"])
            assert stored == {key: int(key.split(":")[1]) for key in report["acked_sets"]}
            for message in report["messages"]:
                assert redis.password not in message
        errors = [report["errors"] for report in reports]
        print(f"{fault}: {len(acked)} of {attempted} acknowledged, count {count}; {errors}")
    finally:
        redis.stop()


def with_password(redis: RedisServer, password: str) -> str:
    return f"redis://:{password}@127.0.0.1:{redis.port}/0"


def full_text(error: BaseException) -> str:
    """The error as a log shows it: message, traceback and every chained cause."""
    return "".join(traceback.format_exception(error))


def test_a_wrong_password_is_refused_clearly(redis_server: RedisServer) -> None:
    wrong = "wrong-" + redis_server.password[::-1]
    with pytest.raises(AuthenticationFailed) as refused:
        get_shared_state(address=with_password(redis_server, wrong))["anything"]
    message = str(refused.value)
    assert f"127.0.0.1:{redis_server.port}" in message
    assert "password" in message.lower()
    for secret in (wrong, redis_server.password):
        assert secret not in full_text(refused.value)


def test_a_wrong_password_is_refused_by_the_asyncio_client(redis_server: RedisServer) -> None:
    wrong = "wrong-" + redis_server.password[::-1]

    async def connect() -> None:
        state = await sharedstate.aio.get_shared_state(address=with_password(redis_server, wrong))
        await state.get("anything")

    with pytest.raises(AuthenticationFailed) as refused:
        asyncio.run(connect())
    assert f"127.0.0.1:{redis_server.port}" in str(refused.value)
    assert wrong not in full_text(refused.value)


def test_redis_not_running_names_the_address_without_the_password(workdir: str) -> None:
    absent = RedisServer(os.path.join(workdir, "absent"), port=free_port())  # never started
    with pytest.raises(SharedStateError) as refused:
        get_shared_state(address=absent.url(), timeout=5)["anything"]
    assert f"127.0.0.1:{absent.port}" in str(refused.value)
    assert absent.password not in full_text(refused.value)
    assert processes_mentioning(workdir) == []  # start=True started nothing in its place
