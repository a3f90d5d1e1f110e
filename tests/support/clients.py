"""The client side as a worker has it: a fresh state, classes only the client can import."""

from __future__ import annotations

import os

import sharedstate.client.state


def write_client_only_module(directory: str) -> None:
    """Write ``client_models.py`` (a class ``Grid``) where only the test process imports it."""
    os.makedirs(directory)
    with open(os.path.join(directory, "client_models.py"), "w") as file:
        file.write("class Grid:\n    def __init__(self, cells):\n        self.cells = cells\n")


def fresh_state(*, start: bool = False) -> sharedstate.client.state.SharedState:
    """A new state object with new connections, as a restarted worker would have."""
    for state in sharedstate.client.state._states.values():
        state.close()
    sharedstate.client.state._states.clear()
    sharedstate.client.state.forget_settings()
    return sharedstate.client.state.get_shared_state(start=start)
