"""The BaseManager side of the protocol: the registry and the well-known object id.

sharedstate speaks the ``multiprocessing.managers`` protocol unchanged: the same
authentication handshake, then ``(ident, method, args, kwargs)`` requests answered with
``("#RETURN", result)`` or ``("#ERROR", exception)``. The server hosts one
:class:`~sharedstate.store.Store` under the fixed id :data:`STORE_IDENT`, so our client
calls it directly without a ``create`` round trip (and without the server-side
reference counting that leaks when clients die, CPython gh-103136).

The store is also registered as the typeid ``"store"``, so a plain BaseManager client
can reach it::

    SharedStateManager(address, authkey).connect()   # then .store()

Registered callables are module-level functions, never lambdas: registries are pickled
when a manager starts its server with the spawn or forkserver methods.
"""

from __future__ import annotations

from multiprocessing.managers import BaseManager

from .store import Store

STORE_IDENT = "sharedstate-store"

_served: dict[str, Store] = {}


def serve_store(store: Store) -> None:
    """Make ``store`` the object this process's server hands out."""
    _served["store"] = store


def served_store() -> Store:
    """The registry's callable for the ``"store"`` typeid: the one store of this server."""
    return _served["store"]


class SharedStateManager(BaseManager):
    """A BaseManager whose registry knows the sharedstate store."""


SharedStateManager.register("store", callable=served_store, exposed=tuple(sorted(Store.EXPOSED)))
