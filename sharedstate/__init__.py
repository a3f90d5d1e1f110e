"""State shared by all the worker processes of a Python app, without running Redis.

::

    from sharedstate import get_shared_state

    state = get_shared_state()      # connects, or starts the server exactly once
    state.incr("hits")              # atomic across every worker
    state["cfg"]["db"]["port"] = 5432   # nested writes take effect
"""

__version__ = "0.1.0"

from .client.state import SharedLock, SharedNamespace, SharedState, get_shared_state
from .client.views import SharedDict, SharedList
from .errors import (
    AlreadyRunning,
    AttributeNotFound,
    AuthenticationFailed,
    ConfigError,
    Conflict,
    ConnectionLost,
    CorruptFile,
    IndexOutOfRange,
    InsecurePermissions,
    InvalidArgument,
    InvalidKey,
    KeyNotFound,
    LeaseExpired,
    LockError,
    LockLost,
    PersistenceError,
    ServerError,
    ServerNotRunning,
    ServerStartError,
    ServerStopping,
    SharedStateError,
    SnapshotInUse,
    Timeout,
    TooManyClients,
    ValueNotFound,
    ValueNotLoadable,
    ValueNotPicklable,
    ValueTooLarge,
    WrongType,
)

__all__ = [
    "AlreadyRunning",
    "AttributeNotFound",
    "AuthenticationFailed",
    "ConfigError",
    "Conflict",
    "ConnectionLost",
    "CorruptFile",
    "IndexOutOfRange",
    "InsecurePermissions",
    "InvalidArgument",
    "InvalidKey",
    "KeyNotFound",
    "LeaseExpired",
    "LockError",
    "LockLost",
    "PersistenceError",
    "ServerError",
    "ServerNotRunning",
    "ServerStartError",
    "ServerStopping",
    "SharedDict",
    "SharedList",
    "SharedLock",
    "SharedNamespace",
    "SharedState",
    "SharedStateError",
    "SnapshotInUse",
    "Timeout",
    "TooManyClients",
    "ValueNotFound",
    "ValueNotLoadable",
    "ValueNotPicklable",
    "ValueTooLarge",
    "WrongType",
    "get_shared_state",
]
