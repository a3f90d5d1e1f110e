"""Another Unix user on this machine, for the tests where an attacker is someone else.

Creating a user needs root: the ``other_user`` fixture (conftest.py) makes a throwaway
system user (no home, no shell) for the test session and removes it afterwards, and
skips, saying why, when it can't. Programs run as that user with the system's own
Python (``/usr/bin/python3``): the test interpreter may live under a directory other
users can't enter, such as ``/root/.pyenv``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

SYSTEM_PYTHON = "/usr/bin/python3"


@dataclass(frozen=True)
class OtherUser:
    name: str
    uid: int
    gid: int

    def popen(self, argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Start ``argv`` as this user."""
        return subprocess.Popen(argv, user=self.uid, group=self.gid, extra_groups=[], **kwargs)  # type: ignore[call-overload, no-any-return]


def why_no_other_user() -> str | None:
    """Why a second user can't be made here, or None if it can."""
    if os.geteuid() != 0:
        return "creating a second Unix user needs root"
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        return "useradd/userdel are not installed"
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} is missing: the other user needs a Python it can run"
    return None
