"""The state in a Redis (or Valkey) server: chosen by a ``redis://`` address.

The same operations as the local server (:mod:`.operations`), run by a sync driver
(:mod:`.sync`) and an asyncio one (:mod:`.aio`) with redis-py, an optional dependency:
``pip install 'sharedstate[redis]'``. Where each part of the state lives in Redis:
:mod:`.names`; how values are kept: :mod:`.values`; the atomic steps: :mod:`.scripts`.
"""
