"""Looking at persistence files from a test: fingerprints, damage, segments, refusals."""

from __future__ import annotations

import glob
import hashlib
import os
import subprocess
import sys

from .processes import REPO_ROOT


def fingerprint(path: str) -> str:
    """The SHA-256 of one file's bytes."""
    with open(path, "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()


def fingerprints(directory: str, *, with_lock: bool = True) -> dict[str, str]:
    """The SHA-256 of every file in ``directory``, by name: proof that nothing changed.

    ``with_lock=False`` leaves out the snapshot's lock file, in which each server that
    starts writes its pid, even one that then refuses damaged files.
    """
    return {
        name: fingerprint(os.path.join(directory, name))
        for name in sorted(os.listdir(directory))
        if os.path.isfile(os.path.join(directory, name))
        and (with_lock or not name.endswith(".lock"))
    }


def flip_byte(path: str, offset: int, mask: int = 0xFF) -> None:
    """Damage ``path`` at ``offset`` (``mask=1``: one flipped bit)."""
    with open(path, "r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ mask]))


def segments(snapshot: str) -> list[str]:
    """The journal segments of ``snapshot``, oldest first."""
    return sorted(glob.glob(glob.escape(snapshot) + ".journal.*"))


def record_offsets(segment: str) -> list[int]:
    """Where each record of a journal segment starts."""
    from sharedstate.persistence.journal import read_segment

    return [record.offset for record in read_segment(segment).records]


def serve_refused(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """Run ``sharedstate serve ARGS``, which must refuse to start and exit by itself.

    A server that starts instead is killed, and the test fails saying so.
    """
    try:
        return subprocess.run(
            [sys.executable, "-m", "sharedstate", "serve", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=dict(os.environ, PYTHONPATH=REPO_ROOT),
        )
    except subprocess.TimeoutExpired as expired:
        raise AssertionError(
            f"the server started instead of refusing (still running after {timeout:g} s): "
            f"{expired.stderr!r}"
        ) from None


def snapshot_in(workdir: str, directory: str = "data") -> str:
    """A snapshot path in a new ``directory`` of ``workdir`` (a server won't create it)."""
    path = os.path.join(workdir, directory)
    os.makedirs(path, exist_ok=True)
    return os.path.join(path, "state.snap")
