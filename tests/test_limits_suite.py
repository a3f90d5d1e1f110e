"""limits' own storage and strategy tests, run against sharedstate's limits storages.

limits' tests are parametrized by storage URI; their in-memory case runs here with
``memory://`` meaning our storage (and ``async+memory://`` our asyncio storage, for
limits' ``tests/aio/`` and its asyncio concurrency tests), on a real server
(tests/support/limits_peer_plugin.py says how, and which tests are skipped and why).
They run in a pytest of their own, in limits' source release (tests/support/peer_suites.py
fetches it at its pinned version), without limits' conftest, which needs Docker
containers of Redis, memcached and MongoDB. As in limits' own CI, the `flaky` plugin
reruns the timing-sensitive tests limits marks ``@pytest.mark.flaky`` (up to 3 runs
where it says so).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from .support.peer_suites import source_of
from .support.processes import REPO_ROOT
from .support.servers import ServerProcess

PLUGIN_DIR = os.path.join(REPO_ROOT, "tests", "support")

# limits' test file -> how many of its tests must pass against our storage.
SUITES = {
    "tests/test_storage.py": 8,  # incr, expiry, custom amounts, clear, reset, check
    "tests/test_strategy.py": 15,  # fixed, moving and sliding window strategies
    "tests/integration/test_concurrency.py": 6,  # 100 threads, or 100 asyncio tasks, on one limit
    "tests/aio/test_storage.py": 8,  # the same storage tests, async
    "tests/aio/test_strategy.py": 19,  # fixed, moving and sliding window strategies, async
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("suite", list(SUITES))
def test_limits_own_tests_pass_against_our_storage(
    suite: str, server: ServerProcess, workdir: str
) -> None:
    source = source_of("limits")
    ini = os.path.join(workdir, "pytest.ini")  # instead of limits' (coverage, Docker...)
    with open(ini, "w") as file:
        file.write("[pytest]\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", ini, "--rootdir", source, "--noconftest",
         "-p", "limits_peer_plugin", "-p", "no:cacheprovider", "-q", "-rs", suite],
        cwd=source, capture_output=True, text=True, timeout=280, check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([PLUGIN_DIR, source])},
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    passed = re.search(r"(\d+) passed", output)
    assert passed is not None, output
    assert int(passed.group(1)) >= SUITES[suite], output
