"""Starlette and FastAPI: the shared state opened with the app, on ``app.state.shared``.

::

    from fastapi import Depends, FastAPI
    from sharedstate.aio import AsyncSharedState
    from sharedstate.starlette import lifespan, shared_state

    app = FastAPI(lifespan=lifespan)

    @app.post("/hits")
    async def hits(state: AsyncSharedState = Depends(shared_state)) -> int:
        return await state.incr("hits")

Each worker process (``uvicorn --workers 4``, or gunicorn with uvicorn's worker) runs the
lifespan in its own event loop: at startup it connects, starting the server if none is
running (exactly one server however many workers race), and at shutdown it closes its
connections. The server stays up for the other workers and outlives the one that
started it. With a lifespan of your own, or settings other than the environment's::

    app = FastAPI(lifespan=shared_state_lifespan(my_lifespan, timeout=30))

``my_lifespan`` runs inside, so it may already use ``app.state.shared``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

# The one thing taken from Starlette: FastAPI injects the request into a dependency by
# the class its parameter is annotated with, so the class must exist when the function
# is defined. HTTPConnection rather than Request: the dependency works for websockets too.
from starlette.requests import HTTPConnection

from .aio import AsyncSharedState, get_shared_state
from .errors import ConfigError

STATE_ATTRIBUTE = "shared"  # app.state.shared

# What FastAPI(lifespan=...) and Starlette(lifespan=...) take. What it yields is Any:
# None, or the lifespan state (a mapping) that Starlette copies into request.state.
AppLifespan = Callable[[Any], AbstractAsyncContextManager[Any]]


def shared_state_lifespan(
    app_lifespan: AppLifespan | None = None,
    *,
    address: str | tuple[str, int] | None = None,
    authkey: bytes | str | None = None,
    start: bool = True,
    timeout: float = 10.0,
) -> AppLifespan:
    """A lifespan that opens the shared state around ``app_lifespan`` (if any).

    At startup it connects (``await sharedstate.aio.get_shared_state(address, authkey,
    start=start, timeout=timeout)``, which starts the server if none is running and
    ``start`` is true) and puts the state on ``app.state.shared``; then it enters
    ``app_lifespan(app)`` and yields what that yields (lifespan state, for Starlette to
    copy into each request's ``request.state``). At shutdown it leaves ``app_lifespan``
    first, then closes the state's connections (``await state.aclose()``); the server
    keeps running for the other workers::

        @contextlib.asynccontextmanager
        async def my_lifespan(app):
            await app.state.shared.setdefault("started", 0)
            yield

        app = FastAPI(lifespan=shared_state_lifespan(my_lifespan))
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        state = await get_shared_state(address, authkey, start=start, timeout=timeout)
        setattr(app.state, STATE_ATTRIBUTE, state)
        try:
            if app_lifespan is None:
                yield None
            else:
                async with app_lifespan(app) as lifespan_state:
                    yield lifespan_state
        finally:
            with contextlib.suppress(AttributeError):
                delattr(app.state, STATE_ATTRIBUTE)
            await state.aclose()

    return lifespan


lifespan = shared_state_lifespan()
"""The lifespan with the settings from the environment: ``FastAPI(lifespan=lifespan)``."""


async def shared_state(request: HTTPConnection) -> AsyncSharedState:
    """The app's shared state, for a FastAPI dependency or a Starlette endpoint::

        @app.get("/hits")
        async def hits(state: AsyncSharedState = Depends(shared_state)) -> int:
            return await state.incr("hits")

        # Starlette, in an endpoint:  state = await shared_state(request)

    Raises :class:`~sharedstate.errors.ConfigError` if the app was not created with
    sharedstate's lifespan (or the request reached a mounted sub-app, whose lifespan
    does not run: use the outer app's state there).
    """
    try:
        state: AsyncSharedState = getattr(request.app.state, STATE_ATTRIBUTE)
    except AttributeError:
        raise ConfigError(
            "sharedstate is not set up on this app: create it with "
            "lifespan=sharedstate.starlette.lifespan (or shared_state_lifespan(...))"
        ) from None
    return state
