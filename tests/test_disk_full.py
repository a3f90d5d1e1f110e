"""A real full filesystem: a small tmpfs, filled up after a crash.

The server's files live on a tmpfs of a few MiB mounted in the test's directory (this
needs root; the tests skip, saying why, where mounting is not allowed). After a crash
the journal holds the state; then the filesystem is filled, so that the room for a whole
snapshot is gone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
from collections.abc import Iterator

import pytest

from sharedstate import get_shared_state

from .support.clients import fresh_state
from .support.persisted import fingerprints, segments, serve_refused
from .support.processes import kill_and_wait, run_cli, wait_until
from .support.servers import ServerFactory

pytestmark = pytest.mark.fault

VALUE = b"v" * 16_000
KEYS_WRITTEN = [f"k{index}" for index in range(200)]  # 3.2 MB of journal, on 8 MiB


@contextlib.contextmanager
def small_filesystem(path: str, size: str) -> Iterator[None]:
    """Mount a tmpfs of ``size`` at ``path`` for the test; unmounted however it ends."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    os.makedirs(path, mode=0o700)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", path],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    )
    if mount.returncode != 0:
        pytest.skip(f"mounting a tmpfs was refused: {mount.stderr.strip()}")
    try:
        yield
    finally:
        # Lazily: a server the test failed to stop may still hold files there.
        subprocess.run(["umount", "-l", path], check=False)  # noqa: S607


def fill(directory: str, leave: int) -> str:
    """Fill the filesystem of ``directory`` up, then free ``leave`` bytes; return the filler."""
    filler = os.path.join(directory, "filler")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    block = b"\xff" * (1 << 16)
    try:
        while True:
            os.write(fd, block)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    os.truncate(filler, max(0, os.path.getsize(filler) - leave))
    return filler


def crash_after_writes(server_factory: ServerFactory, args: tuple[str, ...]) -> None:
    server = server_factory(*args).start()
    state = get_shared_state(start=False)
    for key in KEYS_WRITTEN:
        state[key] = VALUE  # acknowledged once fsynced (fsync always)
    kill_and_wait(server.pid)


@pytest.mark.timeout(120)
def test_a_crashed_server_restarts_on_a_nearly_full_filesystem(
    server_factory: ServerFactory, workdir: str
) -> None:
    data = os.path.join(workdir, "data")
    snapshot = os.path.join(data, "state.snap")
    args = ("--snapshot", snapshot, "--fsync", "always", "--snapshot-interval", "3600")
    with small_filesystem(data, "8m"):
        crash_after_writes(server_factory, args)
        filler = fill(data, leave=64 << 10)  # room for the journal, not for a snapshot
        server = server_factory(*args).start()
        state = fresh_state()
        assert state.get_many(KEYS_WRITTEN) == dict.fromkeys(KEYS_WRITTEN, VALUE)
        wait_until(lambda: "UNHEALTHY" in run_cli("status").stdout)
        assert "No space left on device" in run_cli("status").stdout
        state["small"] = 1  # the journal still takes writes
        os.unlink(filler)
        # The failed snapshot is retried; once it succeeds, the old segment goes.
        wait_until(lambda: "persistence: ok" in run_cli("status").stdout, timeout=30)
        assert len(segments(snapshot)) == 1
        server.signal(signal.SIGTERM)
        assert server.wait() == 0
        server = server_factory(*args).start()
        state = fresh_state()
        assert state.get_many(KEYS_WRITTEN) == dict.fromkeys(KEYS_WRITTEN, VALUE)
        assert state["small"] == 1
        server.stop()


@pytest.mark.timeout(120)
def test_a_full_filesystem_refuses_to_start_naming_the_file_and_the_room_needed(
    server_factory: ServerFactory, workdir: str, address: str
) -> None:
    data = os.path.join(workdir, "data")
    snapshot = os.path.join(data, "state.snap")
    args = ("--snapshot", snapshot, "--fsync", "always", "--snapshot-interval", "3600")
    with small_filesystem(data, "8m"):
        crash_after_writes(server_factory, args)
        filler = fill(data, leave=0)
        before = fingerprints(data, with_lock=False)
        result = serve_refused("--address", address, *args)
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        assert f"{snapshot}.journal." in result.stderr, "names the file it could not create"
        assert "No space left on device" in result.stderr
        assert "free" in result.stderr
        assert fingerprints(data, with_lock=False) == before
        os.unlink(filler)
        server = server_factory(*args).start()
        assert fresh_state().get_many(KEYS_WRITTEN) == dict.fromkeys(KEYS_WRITTEN, VALUE)
        server.stop()
