"""Redis restarted, killed, away or hung under load; a wrong password; Redis not running.

The clients must see only sharedstate's errors (``ConnectionLost`` for a call cut off,
``Timeout`` for a hung Redis, another connection error for Redis being away),
reconnect by themselves, and never return a wrong answer (a late reply read as the
answer to a later call would show as one value returned twice). To tell a wrong answer
from data Redis forgot, the Redis of these tests keeps an append-only file fsynced
before each reply (tests/support/durable_redis.py): everything acknowledged survives a
restart, and even SIGKILL, so the count after the fault lies between the acknowledged
and the attempted increments. No message ever shows the password.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import time
import traceback
from typing import Any

import pytest

import sharedstate.aio
from sharedstate import get_shared_state
from sharedstate.errors import AuthenticationFailed, SharedStateError

from .support.durable_redis import DurableRedisServer
from .support.machines import unique_prefix
from .support.processes import fork_context, run_cli, run_in_processes, wait_until
from .support.procfs import processes_mentioning
from .support.redis_servers import RedisServer, free_port

WORKERS = 4
CALLS_AFTER_FAULT = 20  # successful calls each worker makes on the same state afterwards


class Tally:
    """What one worker's calls did, for the test to check against Redis afterwards.

    Acknowledged increments (their values), attempted ones, acknowledged sets, and the
    errors by kind: connection errors by class name, anything else as "other".
    """

    def __init__(self, me: int, progress: Any, failures: Any) -> None:
        self.me, self.progress, self.failures = me, progress, failures
        self.acked: list[int] = []
        self.attempted = 0
        self.acked_sets: list[str] = []
        self.errors: dict[str, int] = {}
        self.messages: set[str] = set()
        self.after_fault = 0
        self.deadline = time.monotonic() + 40

    def more(self) -> bool:
        return self.after_fault < CALLS_AFTER_FAULT and time.monotonic() < self.deadline

    def next_key(self) -> tuple[str, int]:
        number = self.attempted
        self.attempted += 1
        return f"w{self.me}:{number}", number

    def succeeded(self, fault_was_done: bool) -> None:
        self.after_fault += fault_was_done  # same state object: it reconnected by itself
        self.progress[self.me] += 1  # this worker's own slot: no other writer

    def failed(self, error: SharedStateError) -> None:
        # Redis away is trouble with the connection (or, hung, a call timing out),
        # whatever the subclass says.
        away = isinstance(error, (ConnectionError, TimeoutError))
        name = type(error).__name__ if away else "other"
        self.errors[name] = self.errors.get(name, 0) + 1
        self.messages.add("".join(traceback.format_exception(error)))
        with self.failures.get_lock():
            self.failures.value += 1

    def report(self) -> dict[str, Any]:
        return {
            "acked": self.acked,
            "attempted": self.attempted,
            "acked_sets": self.acked_sets,
            "errors": self.errors,
            "messages": sorted(self.messages)[:50],
            "after_fault": self.after_fault,
        }


def work_through_fault(me: int, fault_done: Any, progress: Any, failures: Any) -> dict[str, Any]:
    """incr and set in a loop, on one state object, until well after the fault.

    Any exception other than a SharedStateError escapes and fails the worker.
    """
    state = get_shared_state()
    tally = Tally(me, progress, failures)
    while tally.more():
        fault_was_done = fault_done.is_set()
        key, number = tally.next_key()
        try:
            tally.acked.append(state.incr("count"))
            state[key] = number
            tally.acked_sets.append(key)
        except SharedStateError as error:
            tally.failed(error)
            time.sleep(0.01)  # Redis is away: don't spin
            continue
        tally.succeeded(fault_was_done)
    return tally.report()


def work_through_fault_async(
    me: int, fault_done: Any, progress: Any, failures: Any
) -> dict[str, Any]:
    """:func:`work_through_fault` with the asyncio client."""

    async def work() -> dict[str, Any]:
        state = await sharedstate.aio.get_shared_state()
        tally = Tally(me, progress, failures)
        while tally.more():
            fault_was_done = fault_done.is_set()
            key, number = tally.next_key()
            try:
                tally.acked.append(await state.incr("count"))
                await state.set(key, number)
                tally.acked_sets.append(key)
            except SharedStateError as error:
                tally.failed(error)
                await asyncio.sleep(0.01)
                continue
            tally.succeeded(fault_was_done)
        return tally.report()

    return asyncio.run(work())


def run_worker(me: int, *args: Any) -> dict[str, Any]:
    """Half the workers use the sync client, half the asyncio one."""
    worker = work_through_fault if me % 2 == 0 else work_through_fault_async
    return worker(me, *args)


@pytest.mark.fault  # the others here are quick refusals, for the quick suite too
@pytest.mark.timeout(60)
@pytest.mark.parametrize("fault", ["restart", "sigkill", "outage", "hang"])
def test_redis_restarted_killed_or_hung_under_load_gives_no_wrong_answer(
    workdir: str, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    redis = DurableRedisServer(os.path.join(workdir, "redis")).start()
    try:
        monkeypatch.setenv("SHAREDSTATE_ADDRESS", redis.url())
        monkeypatch.setenv("SHAREDSTATE_PREFIX", unique_prefix())
        monkeypatch.setenv("SHAREDSTATE_CALL_TIMEOUT", "1")  # a hung Redis fails calls soon
        fault_done = fork_context.Event()
        # Successful calls per worker: the fault waits until every worker is connected
        # and under way (one that connected only during the fault would test nothing).
        progress, failures = fork_context.Array("i", WORKERS), fork_context.Value("i", 0)
        work = [(me, fault_done, progress, failures) for me in range(WORKERS)]
        # A thread waits for the workers while this one makes the fault.
        with concurrent.futures.ThreadPoolExecutor(1) as waiter:
            running = waiter.submit(run_in_processes, run_worker, work, 55)
            try:
                wait_until(lambda: min(progress[:]) >= 50)  # every worker under load
                if fault == "restart":
                    redis.restart()
                elif fault == "sigkill":
                    redis.stop(kill=True)
                    redis.start()
                elif fault == "outage":  # away long enough for every worker to fail a few times
                    redis.stop()
                    wait_until(lambda: failures.value >= 5 * WORKERS)
                    redis.start()
                else:  # hung: connections stay open, nothing answers, until SIGCONT
                    assert redis.process is not None
                    redis.process.send_signal(signal.SIGSTOP)
                    try:
                        wait_until(lambda: failures.value >= 2 * WORKERS)
                    finally:
                        redis.process.send_signal(signal.SIGCONT)
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


def test_the_cli_says_redis_does_not_answer_when_it_is_down(workdir: str) -> None:
    absent = RedisServer(os.path.join(workdir, "absent"), port=free_port())  # never started
    result = run_cli("get", "anything", env={"SHAREDSTATE_ADDRESS": absent.url()}, timeout=30)
    assert result.returncode != 0
    assert f"127.0.0.1:{absent.port}" in result.stderr
    assert absent.password not in result.stderr + result.stdout
    assert "Redis" in result.stderr, result.stderr
    # `sharedstate serve` refuses a Redis address: it can't be the next step.
    assert "sharedstate serve" not in result.stderr, result.stderr
