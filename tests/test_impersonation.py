"""Another local user posing as the server: every route an outside review found.

An impostor that a client talks to can send it a pickle, which runs the impostor's code
in the client's process, as the client's user. So a client must know, before it loads
anything, that it talks to a process of its own user (or root, or the user the operator
named), or to one that proved it knows the key. The impostor here (tests/support/impostor.py)
runs as a second Unix user where the route needs one, and tries to reflect one victim's
handshake onto another, so it never needs the key.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from sharedstate.config import load_settings
from sharedstate.errors import InsecurePermissions

from .support.processes import REPO_ROOT, run_cli
from .support.servers import free_tcp_port
from .support.users import SYSTEM_PYTHON, OtherUser

IMPOSTOR = os.path.join(os.path.dirname(__file__), "support", "impostor.py")
# The handshake the victims speak, so the impostor tries the attack that fits it.
PROTOCOL = "ss1" if importlib.util.find_spec("sharedstate.handshake") else "mp"

VICTIM = """
import sys
from sharedstate import get_shared_state
try:
    get_shared_state(start=False, timeout=5)["x"] = 1
except BaseException as error:
    print(type(error).__name__, error)
    sys.exit(1)
print("connected")
"""


@pytest.fixture
def victim_key(workdir: str) -> str:
    """A key file of the victim's own, as an app with SHAREDSTATE_AUTHKEY_FILE has."""
    path = os.path.join(workdir, "app.key")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, os.urandom(32).hex().encode())
    os.close(fd)
    return path


class Impostor:
    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line == b"listening\n", f"the impostor did not start: {line!r}"

    def bytes_received(self, connections: int) -> list[int]:
        """What each of ``connections`` victim connections sent it, once they hung up."""
        assert self.process.stdout is not None
        counts = []
        for _ in range(connections):  # it reports each connection when its victim hangs up
            line = self.process.stdout.readline()
            assert line.startswith(b"received "), f"the impostor said {line!r}"
            counts.append(int(line.split()[1]))
        return counts


# start_impostor(*args, user=..., marker=...): the impostor running, killed after the test.
StartImpostor = Callable[..., Impostor]


@pytest.fixture
def start_impostor() -> Iterator[StartImpostor]:
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str, user: OtherUser | None, marker: str) -> Impostor:
        with open(IMPOSTOR, encoding="utf-8") as file:
            source = file.read()
        argv = [SYSTEM_PYTHON if user else sys.executable, "-c", source]
        argv += [*args, "--marker", marker, "--protocol", PROTOCOL]
        if user is not None:
            process = user.popen(argv, stdout=subprocess.PIPE, cwd="/")
        else:
            process = subprocess.Popen(argv, stdout=subprocess.PIPE)
        started.append(process)
        return Impostor(process)

    try:
        yield start
    finally:
        for process in started:
            process.kill()
            process.wait(10)
            if process.stdout is not None:
                process.stdout.close()


def run_victims(env: dict[str, str], count: int = 2) -> list[str]:
    """``count`` worker processes connecting at once; what each of them printed."""
    victims = [
        subprocess.Popen(
            [sys.executable, "-c", VICTIM],
            env=dict(env, PYTHONPATH=REPO_ROOT),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(count)
    ]
    outputs = []
    for victim in victims:
        output, _ = victim.communicate(timeout=30)
        outputs.append(output.decode())
    return outputs


def victim_env(**settings: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHAREDSTATE_")}
    for name, value in settings.items():
        env.pop(name, None)
        if value is not None:
            env[name] = value
    return env


def assert_no_code_ran(marker: str, outputs: list[str]) -> None:
    assert not os.path.exists(marker), f"the impostor ran code in a victim: {outputs}"
    for output in outputs:
        assert "connected" not in output


@pytest.mark.timeout(60)
def test_an_impostor_in_a_default_directory_another_user_made_is_refused(
    other_user: OtherUser,
    shared_tmp: str,
    victim_key: str,
    workdir: str,
    start_impostor: StartImpostor,
) -> None:
    # No XDG_RUNTIME_DIR: the default socket is $TMPDIR/sharedstate-$UID/state.sock,
    # and another user got to create that directory first.
    directory = os.path.join(shared_tmp, f"sharedstate-{os.getuid()}")
    marker = os.path.join(workdir, "owned")
    impostor = start_impostor(
        "--make-dir", directory, "--unix", os.path.join(directory, "state.sock"),
        user=other_user, marker=marker,
    )  # fmt: skip
    env = victim_env(TMPDIR=shared_tmp, XDG_RUNTIME_DIR=None, SHAREDSTATE_AUTHKEY_FILE=victim_key)
    outputs = run_victims(env)
    assert_no_code_ran(marker, outputs)
    for output in outputs:
        assert output.startswith("InsecurePermissions"), output
        assert directory in output
        assert f"uid {other_user.uid}" in output
    assert impostor.process.poll() is None
    assert impostor.bytes_received(0) == []  # refused before even connecting


@pytest.mark.timeout(60)
@pytest.mark.parametrize("route", ["sticky-directory-socket", "tcp-port"])
def test_an_impostor_another_user_runs_is_refused_before_anything_is_sent(
    other_user: OtherUser,
    shared_tmp: str,
    victim_key: str,
    workdir: str,
    start_impostor: StartImpostor,
    route: str,
) -> None:
    # A socket path in a /tmp-like directory, where anyone may create a file and got to
    # it first; or a TCP port, bound by another user while the server is down.
    if route == "tcp-port":
        address, listen = f"127.0.0.1:{free_tcp_port()}", "--tcp"
    else:
        address, listen = os.path.join(shared_tmp, "app.sock"), "--unix"
    marker = os.path.join(workdir, "owned")
    impostor = start_impostor(listen, address, user=other_user, marker=marker)
    env = victim_env(SHAREDSTATE_ADDRESS=address, SHAREDSTATE_AUTHKEY_FILE=victim_key)
    outputs = run_victims(env)
    assert_no_code_ran(marker, outputs)
    for output in outputs:
        assert output.startswith("InsecurePermissions"), output
        assert f"uid {other_user.uid}" in output
        assert "SHAREDSTATE_SERVER_USER" in output
    assert impostor.bytes_received(2) == [0, 0]  # connected, checked, sent nothing


@pytest.mark.timeout(60)
def test_a_reflecting_impostor_without_the_key_fails_the_handshake(
    victim_key: str, workdir: str, start_impostor: StartImpostor
) -> None:
    # Run as the victims' own user, so only the handshake stands in its way.
    address = f"127.0.0.1:{free_tcp_port()}"
    marker = os.path.join(workdir, "owned")
    start_impostor("--tcp", address, user=None, marker=marker)
    env = victim_env(SHAREDSTATE_ADDRESS=address, SHAREDSTATE_AUTHKEY_FILE=victim_key)
    outputs = run_victims(env)
    assert_no_code_ran(marker, outputs)
    for output in outputs:
        assert output.startswith(("AuthenticationFailed", "ConnectionLost", "Timeout")), output


@pytest.mark.timeout(60)
def test_a_key_file_that_is_a_symbolic_link_is_refused(
    other_user: OtherUser, shared_tmp: str, workdir: str
) -> None:
    # Another user links the key path to a private file of ours whose content the
    # handshake would then use as the key.
    private = os.path.join(workdir, "private-notes")
    fd = os.open(private, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"some private text of the victim's, long enough for a key")
    os.close(fd)
    address = os.path.join(shared_tmp, "app.sock")
    link = subprocess.run(
        [SYSTEM_PYTHON, "-c", f"import os; os.symlink({private!r}, {address + '.key'!r})"],
        user=other_user.uid,
        group=other_user.gid,
        check=False,
        timeout=30,
    )
    assert link.returncode == 0
    env = victim_env(SHAREDSTATE_ADDRESS=address)
    (output,) = run_victims(env, count=1)
    assert output.startswith("InsecurePermissions"), output
    assert "symbolic link" in output
    served = run_cli("serve", "--address", address, env={"SHAREDSTATE_ADDRESS": address})
    assert served.returncode == 1
    assert "symbolic link" in served.stderr, served.stderr


def test_a_dotenv_file_owned_by_another_user_is_refused(
    other_user: OtherUser, shared_tmp: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A .env in a directory others can write, put there by another user to send our
    # workers to their server.
    dotenv = os.path.join(shared_tmp, ".env")
    planted = subprocess.run(
        [
            SYSTEM_PYTHON, "-c",
            f"open({dotenv!r}, 'w').write('SHAREDSTATE_ADDRESS=127.0.0.1:7999\\n')",
        ],
        user=other_user.uid, group=other_user.gid, check=False, timeout=30,
    )  # fmt: skip
    assert planted.returncode == 0
    monkeypatch.chdir(shared_tmp)
    monkeypatch.delenv("SHAREDSTATE_ADDRESS")
    with pytest.raises(InsecurePermissions) as refused:
        load_settings()
    message = str(refused.value)
    assert dotenv in message
    assert f"uid {other_user.uid}" in message


@pytest.mark.parametrize("mode", [0o664, 0o646])
def test_a_dotenv_file_others_can_write_is_refused(
    workdir: str, monkeypatch: pytest.MonkeyPatch, mode: int
) -> None:
    dotenv = os.path.join(workdir, ".env")
    with open(dotenv, "w") as file:
        file.write("SHAREDSTATE_LOG_LEVEL=DEBUG\n")
    os.chmod(dotenv, mode)
    with pytest.raises(InsecurePermissions, match="chmod go-w"):
        load_settings()
    os.chmod(dotenv, 0o644)  # readable by others is fine: nothing secret should be in it
    assert load_settings().log_level == "DEBUG"
