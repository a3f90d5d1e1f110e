"""State shared by all the worker processes of a Python app, without running Redis.

::

    from sharedstate import get_shared_state

    state = get_shared_state()      # connects, or starts the server exactly once
    state.incr("hits")              # atomic across every worker
    state["cfg"]["db"]["port"] = 5432   # nested writes take effect
"""

__version__ = "0.1.0"

import typing as _typing
from types import ModuleType as _ModuleType

from .client.state import SharedLock as SharedLock
from .client.state import SharedNamespace as SharedNamespace
from .client.state import SharedState as SharedState
from .client.state import forget_settings as forget_settings
from .client.state import get_shared_state as get_shared_state
from .client.views import SharedDict as SharedDict
from .client.views import SharedList as SharedList
from .errors import AlreadyRunning as AlreadyRunning
from .errors import AttributeNotFound as AttributeNotFound
from .errors import AuthenticationFailed as AuthenticationFailed
from .errors import ConfigError as ConfigError
from .errors import Conflict as Conflict
from .errors import ConnectionLost as ConnectionLost
from .errors import CorruptFile as CorruptFile
from .errors import IndexOutOfRange as IndexOutOfRange
from .errors import InsecurePermissions as InsecurePermissions
from .errors import InvalidArgument as InvalidArgument
from .errors import InvalidKey as InvalidKey
from .errors import KeyNotFound as KeyNotFound
from .errors import LeaseExpired as LeaseExpired
from .errors import LockError as LockError
from .errors import LockLost as LockLost
from .errors import MemoryLimitReached as MemoryLimitReached
from .errors import PersistenceError as PersistenceError
from .errors import ServerError as ServerError
from .errors import ServerNotRunning as ServerNotRunning
from .errors import ServerStartError as ServerStartError
from .errors import ServerStopping as ServerStopping
from .errors import SharedStateError as SharedStateError
from .errors import SnapshotInUse as SnapshotInUse
from .errors import Timeout as Timeout
from .errors import TooManyClients as TooManyClients
from .errors import ValueNotFound as ValueNotFound
from .errors import ValueNotLoadable as ValueNotLoadable
from .errors import ValueNotPicklable as ValueNotPicklable
from .errors import ValueTooLarge as ValueTooLarge
from .errors import WrongEventLoop as WrongEventLoop
from .errors import WrongType as WrongType

# Each public name is written once, above. ``from sharedstate import *`` takes those
# names, not the submodules that importing them bound here (``config``, ``errors``...).
# mypy reads only a literal ``__all__``; without one it exports the ``X as X`` names.
if not _typing.TYPE_CHECKING:
    __all__ = [
        name
        for name, value in globals().items()
        if not name.startswith("_") and not isinstance(value, _ModuleType)
    ]
