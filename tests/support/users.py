"""Another Unix user on this machine, for the tests where an attacker is someone else.

Creating a user needs root: the fixture makes a throwaway system user (no home, no
shell) for the test session and removes it afterwards, and skips, saying why, when it
can't. Programs run as that user with the system's own Python (``/usr/bin/python3``):
the test interpreter may live under a directory other users can't enter, such as
``/root/.pyenv``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

SYSTEM_PYTHON = "/usr/bin/python3"


@dataclass(frozen=True)
class OtherUser:
    name: str
    uid: int
    gid: int

    def popen(self, argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Start ``argv`` as this user."""
        return subprocess.Popen(argv, user=self.uid, group=self.gid, extra_groups=[], **kwargs)  # type: ignore[call-overload, no-any-return]


def _why_not_possible() -> str | None:
    if os.geteuid() != 0:
        return "creating a second Unix user needs root"
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        return "useradd/userdel are not installed"
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} is missing: the other user needs a Python it can run"
    return None


@pytest.fixture(scope="session")
def other_user() -> Iterator[OtherUser]:
    """A second Unix user, created for the session and removed after it."""
    reason = _why_not_possible()
    if reason is not None:
        pytest.skip(reason)
    name = f"sstest{os.getpid()}"
    useradd, userdel = shutil.which("useradd"), shutil.which("userdel")
    assert useradd is not None
    assert userdel is not None
    subprocess.run(
        [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
        timeout=30,
    )
    try:
        import pwd

        entry = pwd.getpwnam(name)
        yield OtherUser(name, entry.pw_uid, entry.pw_gid)
    finally:
        subprocess.run([userdel, name], check=False, capture_output=True, timeout=30)


@pytest.fixture
def shared_tmp() -> Iterator[str]:
    """A world-writable sticky directory, like ``/tmp``, private to one test."""
    path = tempfile.mkdtemp(prefix="ss-shared-", dir="/tmp")
    os.chmod(path, 0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
