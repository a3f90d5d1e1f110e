"""A test ``redis-server`` that keeps every acknowledged write across restarts and crashes.

Like :class:`~tests.support.redis_servers.RedisServer`, but with the append-only file
on and ``appendfsync always``: Redis writes and fsyncs each command before it replies,
so whatever a client saw acknowledged is still there after a restart, even after
SIGKILL. Fault tests need that to tell a lost acknowledged write (a bug) from data a
non-persistent Redis simply forgot.
"""

from __future__ import annotations

from .redis_servers import RedisServer


class DurableRedisServer(RedisServer):
    persistence = ("--save", "", "--appendonly", "yes", "--appendfsync", "always")
