"""The Lua scripts that make the Redis backend's compound operations atomic.

Redis runs a script with nothing else in between, so each of these is one atomic step,
like one call to the local server. Values stay pickles (Redis can't look inside them),
so the work inside a value is done by the client, and written back with :data:`SWAP`:
a compare-and-set on the SHA-1 of the value it read, retried if another client wrote
in between.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Script:
    """A Lua script, run by its SHA-1 (``EVALSHA``), loaded first if Redis lacks it."""

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        # Redis names scripts by SHA-1; not a security use.
        sha = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()
        object.__setattr__(self, "sha", sha)


def digest(raw: bytes | None) -> bytes:
    """What :data:`SWAP` compares: the SHA-1 of a value as read, or empty if missing."""
    if raw is None:
        return b""
    return hashlib.sha1(raw, usedforsecurity=False).hexdigest().encode()  # as redis.sha1hex


def _write_value(value: int, expiry: int) -> str:
    """Lua: set KEYS[1] to ARGV[value]; ARGV[expiry] says how it expires: "keep" its TTL,
    a TTL in ms, "" never, or "0" at once (the key is deleted)."""
    return f"""
if ARGV[{expiry}] == '0' then
  redis.call('DEL', KEYS[1])
elseif ARGV[{expiry}] == 'keep' then
  redis.call('SET', KEYS[1], ARGV[{value}], 'KEEPTTL')
elseif ARGV[{expiry}] ~= '' then
  redis.call('SET', KEYS[1], ARGV[{value}], 'PX', ARGV[{expiry}])
else
  redis.call('SET', KEYS[1], ARGV[{value}])
end
"""


# KEYS: the key. ARGV: the amount as text, the TTL in ms for a key it creates ("" none,
# "0" expired at once: not created).
# Returns the new value as text, or false when the client must do it (a pickled number,
# or an int sum past 64 bits); raises WRONGTYPE-like errors never: the client decides.
INCR = Script("""
local raw = redis.call('GET', KEYS[1])
if not raw then
  if ARGV[2] == '0' then return ARGV[1] end
  if ARGV[2] ~= '' then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  else
    redis.call('SET', KEYS[1], ARGV[1])
  end
  return ARGV[1]
end
if string.byte(raw, 1) == 128 then return false end
local whole = '^%-?%d+$'
if string.match(raw, whole) and string.match(ARGV[1], whole) then
  local added = redis.pcall('INCRBY', KEYS[1], ARGV[1])
  if type(added) == 'table' and added.err then return false end
  return redis.call('GET', KEYS[1])
end
local a, b = tonumber(raw), tonumber(ARGV[1])
if not a or not b then return false end
local sum = string.format('%.17g', a + b)
if not string.find(sum, '[%.eEn]') then sum = sum .. '.0' end
redis.call('SET', KEYS[1], sum, 'KEEPTTL')
return sum
""")

# KEYS: the key. ARGV: the digest of the value read ("" if it was missing), the new
# value, then how it expires (see _write_value).
# Returns 1 if it wrote, 0 if the value had changed since it was read.
SWAP = Script(
    """
local raw = redis.call('GET', KEYS[1])
local now = ''
if raw then now = redis.sha1hex(raw) end
if now ~= ARGV[1] then return 0 end
"""
    + _write_value(value=2, expiry=3)
    + "return 1\n"
)

# KEYS: the key. ARGV: the value. setdefault: the value there, or (false) it set it.
SET_DEFAULT = Script("""
local raw = redis.call('GET', KEYS[1])
if raw then return raw end
redis.call('SET', KEYS[1], ARGV[1])
return false
""")

# KEYS: what is held (the lock, or an edit), the list that wakes a waiter.
# ARGV: the holder's token. Frees it if this token still holds it: 1, else 0.
RELEASE = Script("""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('RPUSH', KEYS[2], '1')
redis.call('PEXPIRE', KEYS[2], 10000)
return 1
""")

# KEYS: what is held. ARGV: the token, the lease in ms. Renews the lease if this token
# still holds it: 1, else 0 (it lapsed, or Redis lost it).
RENEW = Script("""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
""")

# KEYS: the key, its edit, the edit's wake-up list. ARGV: the editor's token, the digest
# of the value the edit began with, the new value, then "keep", a TTL in ms, or "".
# Ends the edit whatever happens. Returns 1 written, 0 the value changed meanwhile,
# -1 the edit was no longer held (its lease ran out), 2 the key is gone (it expired, or
# was deleted). A TTL of "0" deletes the key (it would expire at once).
COMMIT = Script(
    """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return -1 end
redis.call('DEL', KEYS[2])
redis.call('DEL', KEYS[3])
redis.call('RPUSH', KEYS[3], '1')
redis.call('PEXPIRE', KEYS[3], 10000)
local raw = redis.call('GET', KEYS[1])
local now = ''
if raw then now = redis.sha1hex(raw) end
if now ~= ARGV[2] then
  if not raw then return 2 end
  return 0
end
"""
    + _write_value(value=3, expiry=4)
    + "return 1\n"
)
