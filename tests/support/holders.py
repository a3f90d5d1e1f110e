"""Worker processes that take the lock or an edit and keep it until they are killed.

Start one with :func:`~tests.support.processes.start_process` and a forked ``Event``:
it sets the event once it holds what it took, then waits for the test to kill it.
"""

from __future__ import annotations

import time
from typing import Any

from sharedstate import get_shared_state

# Longer than any test's timeout: a holder outlives its test only if the test forgot it.
HOLD_AT_MOST = 600.0


def hold_lock_until_killed(ready: Any) -> None:
    """Take ``state.lock``, set ``ready``, and keep the lock until killed."""
    state = get_shared_state(start=False)
    state.lock.acquire()
    ready.set()
    time.sleep(HOLD_AT_MOST)


def hold_edit_until_killed(ready: Any, key: str, default: Any) -> None:
    """Open ``state.edit(key, default)``, set ``ready``, and keep the edit until killed."""
    state = get_shared_state(start=False)
    with state.edit(key, default):
        ready.set()
        time.sleep(HOLD_AT_MOST)
