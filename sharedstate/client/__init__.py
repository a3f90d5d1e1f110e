"""The worker side: the ``SharedState`` API, its views, the connection, connect-or-start.

Nothing here imports :mod:`sharedstate.server` or :mod:`sharedstate.persistence`, so
``import sharedstate`` in a worker loads only what a client needs.
"""
