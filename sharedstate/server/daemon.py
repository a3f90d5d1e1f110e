"""Running the server in the background, detached from whoever started it.

``sharedstate serve --detach`` forks. The child starts a new session (so it survives
the worker, shell or gunicorn master that started it, and that process never has to
reap it), points its standard streams at the log file, and starts the server. The
parent waits until the child reports "ready" (or an error) through a pipe, prints that,
and exits with a matching status. Whoever ran the command therefore knows the server
is listening, or why it is not, by the time the command returns.
"""

from __future__ import annotations

import os
import select
import sys
import time
from collections.abc import Callable

from ..permissions import open_private_file

Report = Callable[[str | None], None]


def detach(log_path: str, wait: float, started_note: str = "") -> Report:
    """Fork into the background; return, in the child only, a function to report start-up.

    Call the returned function once: with ``None`` when serving, or with an error
    message. The parent exits with status 0 or 1 after relaying it, adding
    ``started_note`` to the line that says the server started.
    """
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.close(write_end)
        _relay_report(read_end, pid, log_path, wait, started_note)
    os.close(read_end)
    os.setsid()
    _redirect_standard_streams(log_path)

    def report(error: str | None) -> None:
        message = f"ready {os.getpid()}" if error is None else f"error {error}"
        os.write(write_end, message.encode())
        os.close(write_end)

    return report


def _relay_report(read_end: int, child: int, log_path: str, wait: float, note: str) -> None:
    chunks = []
    deadline = time.monotonic() + wait
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([read_end], [], [], remaining)[0]:
            sys.stderr.write(
                f"error: the server (pid {child}) did not report ready within {wait:g} s; "
                f"see {log_path}\n"
            )
            os._exit(1)
        chunk = os.read(read_end, 4096)
        if not chunk:
            break
        chunks.append(chunk)
    message = b"".join(chunks).decode(errors="replace")
    if message.startswith("ready "):
        pid = message[6:]
        sys.stdout.write(f"sharedstate server started in the background (pid {pid}){note}\n")
        sys.stdout.flush()
        os._exit(0)
    if message.startswith("error "):
        sys.stderr.write(f"error: {message[6:]}\n")
    else:
        sys.stderr.write(f"error: the server exited during start-up; see {log_path}\n")
    sys.stderr.flush()
    os._exit(1)


def _redirect_standard_streams(log_path: str) -> None:
    log_fd = open_private_file(log_path, "log file", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(null_fd)
    os.close(log_fd)
