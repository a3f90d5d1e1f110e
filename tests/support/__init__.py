"""What the tests share, written once; fixtures themselves live in ``tests/conftest.py``.

Helpers the tests import:

- ``servers``: a real ``sharedstate serve`` (``ServerProcess``), asking it how it is
  (``server_info``, ``requests_served``), a free TCP port
- ``clients``: a fresh state as a restarted worker has it, a class only clients import
- ``processes``: forked workers (``run_in_processes``, ``start_process``), the CLI as a
  separate process, ``kill_and_wait``, ``wait_until``
- ``holders``: workers that take the lock or an edit and keep it until killed
- ``procfs``: what ``/proc`` says of a process (dead, stopped, parent, children, servers)
- ``wire``: the protocol spoken by hand over a raw socket, for bad-input tests
- ``stores``: calling a ``Store`` directly, without a socket
- ``persisted``: looking at snapshot and journal files (fingerprints, damage, segments)
- ``faults``: injected disk errors and cut-off replies, for real server processes
- ``users``: a second Unix user, for tests where the attacker is someone else
- ``gunicorns``: a real gunicorn master with the example config (``Gunicorn``), and
  concurrent HTTP requests to it
- ``peer_suites``: other projects' test suites, fetched from their pinned source releases

Programs the tests start as processes of their own:

- ``fault_server``: ``python -m tests.support.fault_server``, the CLI with ``faults``
- ``gunicorn_app``: the example app plus test endpoints, ``tests.support.gunicorn_app:app``
- ``impostor``: a fake server without the key, run from its source as another user
"""
