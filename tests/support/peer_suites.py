"""Other projects' own test suites, fetched from their published source releases.

Where sharedstate mimics another project's backend (a framework's cache, a rate-limit
storage), that project's tests are run against ours. They are never copied into this
repository: each is downloaded, at a pinned version, as the source distribution the
project published, and unpacked into a cache folder (``SHAREDSTATE_PEER_CACHE``, else
``.cache/peer-suites`` in the checkout). ``.ci/run`` fetches them all first, so a
missing network fails the run there, loudly, instead of in the middle of the tests::

    python -m tests.support.peer_suites          # fetch every pinned release

A test asks for one with :func:`source_of`, which fetches it if the cache lacks it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile

from .processes import REPO_ROOT

# Project name on PyPI -> the version whose tests we run.
PINNED: dict[str, str] = {
    "limits": "5.8.0",  # tests/test_limits_suite.py
    "cachelib": "0.17.0",  # tests/test_cachelib_suite.py
    "Django": "5.2.19",
}


def cache_dir() -> str:
    return os.environ.get("SHAREDSTATE_PEER_CACHE") or os.path.join(
        REPO_ROOT, ".cache", "peer-suites"
    )


def source_of(project: str) -> str:
    """The unpacked source release of ``project`` at its pinned version (fetched once)."""
    version = PINNED[project]
    target = os.path.join(cache_dir(), f"{project}-{version}")
    if os.path.isdir(target):
        return target
    os.makedirs(cache_dir(), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as download:
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--no-binary", ":all:", "--dest", download, f"{project}=={version}"],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(
                f"could not download the source release of {project}=={version} "
                f"(its test suite is run against sharedstate): {result.stderr.strip()}"
            )
        [archive] = [name for name in os.listdir(download) if name.endswith(".tar.gz")]
        unpacked = os.path.join(download, "unpacked")
        with tarfile.open(os.path.join(download, archive)) as tar:
            tar.extractall(unpacked, filter="data")
        [top] = os.listdir(unpacked)
        os.replace(os.path.join(unpacked, top), target)  # whole, or not at all
    return target


def main() -> None:
    for project in sorted(PINNED):
        print(source_of(project))


if __name__ == "__main__":
    main()
