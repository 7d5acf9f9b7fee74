"""
gwebhook under systemd (docs/reference.md 6.6): it tells ``$NOTIFY_SOCKET`` when it
is ready, reloading and stopping (``Type=notify``), takes a listening socket
passed the systemd way (``LISTEN_FDS``/``LISTEN_PID``, fd 3) and still does
TLS on it, and its unit files are valid and hardened as the README says.

No systemd manager runs here: the test plays its part, binding the notify
socket and the activated socket itself, and ``systemd-analyze verify`` checks
the unit files offline.
"""

from __future__ import annotations

import http.client
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from support.credentials import AUTH, HEADERS, basic
from support.daemon import TWISTD
from support.pki import leaf_fingerprint, sha256
from support.ports import free_port
from support.proc import listening_sockets
from support.systemd import NotifySocket

UNITS = Path(__file__).resolve().parent.parent / "systemd"
UNIT_TWISTD = "/opt/gwebhook/bin/twistd"

# What systemd (227 or newer) does before exec'ing a socket-activated
# service: the socket at fd 3, LISTEN_FDS=1, LISTEN_FDNAMES naming it, and
# LISTEN_PID set to the pid that will run the service (exec keeps it).
ACTIVATE = """\
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_FDS"] = "1"
os.environ["LISTEN_FDNAMES"] = "gwebhook.socket"
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"""


@pytest.fixture
def notify_socket():
    # A short directory of its own: a unix socket path is limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="gwn-") as directory:
        listener = NotifySocket(Path(directory) / "notify")
        try:
            yield listener
        finally:
            listener.close()


def unit_settings(path: Path) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit file (continuation lines joined), by key."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line[0] in "#;[":
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


# ------------------------------------------------------------------- sd_notify


def test_notify_ready_reloading_stopping(spawn, notify_socket):
    """READY=1 once serving; RELOADING=1, READY=1 on SIGHUP; STOPPING=1 on SIGTERM."""
    d = spawn(*AUTH, env={"NOTIFY_SOCKET": str(notify_socket.path)}, start=False)

    assert notify_socket.receive(15).get("READY") == "1"
    # Ready means ready: the very first attempt is served, no retrying.
    assert d.request("GET", "/healthz", body=None, timeout=5).status == 200

    d.signal(signal.SIGHUP)
    assert notify_socket.receive(5).get("RELOADING") == "1"
    assert notify_socket.receive(5).get("READY") == "1"
    assert d.request("GET", "/healthz", body=None, timeout=5).status == 200

    d.signal(signal.SIGTERM)
    assert notify_socket.receive(5).get("STOPPING") == "1"
    assert d.wait(10) == -signal.SIGTERM
    assert not [m for m in notify_socket.pending() if "READY" in m]


# ----------------------------------------------------------- socket activation


@pytest.mark.parametrize("workers", ["1", "2"])
def test_socket_activation_serves_tls_on_the_inherited_socket(spawn, pki, workers):
    """A socket passed at fd 3 (LISTEN_FDS, LISTEN_PID) is served with TLS."""
    activated = socket.socket()
    activated.bind(("127.0.0.1", 0))
    activated.listen(16)
    port = activated.getsockname()[1]
    # --port names a port something else holds: binding it would fail start-up.
    occupied = socket.socket()
    occupied.bind(("127.0.0.1", 0))
    occupied.listen(1)
    try:
        d = spawn(
            *AUTH,
            "--workers",
            workers,
            port=occupied.getsockname()[1],
            wrapper=[sys.executable, "-c", ACTIVATE, str(activated.fileno())],
            pass_fds=(activated.fileno(),),
            start=False,
        )
        activated.close()  # the daemon holds the only copy now

        # With workers, they serve the same inherited socket: several requests
        # on new connections, each answered whichever process takes it.
        for _ in range(int(workers) * 4):
            connection = http.client.HTTPSConnection(
                "127.0.0.1", port, timeout=15, context=pki.client_context()
            )
            try:
                connection.request(
                    "POST", "/", body=b'{"name": "activated"}', headers=HEADERS
                )
                reply = connection.getresponse()
                body = reply.read()
                assert reply.status == 200, (body, d.output())
                assert sha256(connection.sock.getpeercert(True)) == leaf_fingerprint(
                    pki
                )
            finally:
                connection.close()
        assert listening_sockets(d.process.pid) == {("127.0.0.1", port)}
        if workers == "2":
            # The worker serves the very socket systemd passed, and stays up.
            with open(f"/proc/{d.process.pid}/task/{d.process.pid}/children") as f:
                [worker] = [int(pid) for pid in f.read().split()]
            assert listening_sockets(worker) == {("127.0.0.1", port)}
            assert "exited" not in d.output()
    finally:
        activated.close()
        occupied.close()
    with sqlite3.connect(d.db) as db:
        names = db.execute("SELECT name FROM incidents").fetchall()
    assert names == [("activated",)] * (int(workers) * 4)


# ------------------------------------------------------------------ unit files


@pytest.mark.process
def test_units_pass_systemd_analyze_verify(tmp_path):
    """systemd-analyze verify accepts both unit files without a single warning."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed, so the units cannot be verified")
    units = []
    for name in ("gwebhook.service", "gwebhook.socket"):
        # verify needs ExecStart's executable to exist: point it at this venv's.
        text = (UNITS / name).read_text().replace(UNIT_TWISTD, TWISTD)
        (tmp_path / name).write_text(text)
        units.append(str(tmp_path / name))
    result = subprocess.run(
        [analyze, "verify", "--man=no", *units],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (result.stdout + result.stderr).strip() == "", "warnings: " + result.stderr


def test_service_unit_is_hardened_and_reloadable():
    """The unit notifies, reloads by HUP, takes secrets as credentials, is confined."""
    unit = unit_settings(UNITS / "gwebhook.service")
    one = {key: values[-1] for key, values in unit.items()}

    assert one["Type"] == "notify"
    assert shlex.split(one["ExecReload"])[-2:] == ["-HUP", "$MAINPID"]
    credentials = {value.split(":", 1)[0] for value in unit["LoadCredential"]}
    assert {"password", "server.crt", "server.key"} <= credentials
    assert one["NoNewPrivileges"] == "yes"
    assert one["ProtectSystem"] == "strict"
    assert one["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert one["StateDirectory"] == "gwebhook"
    assert one["Restart"] == "on-failure"
    assert one.get("DynamicUser") == "yes" or one.get("User") not in (None, "root")
    # twistd's clean stop exits by SIGTERM; systemd must count that as success.
    assert {"SIGTERM", "143"} & set(one["SuccessExitStatus"].split())

    argv = shlex.split(one["ExecStart"])
    options = dict(zip(argv, argv[1:], strict=False))
    assert options["--password-file"] == "${CREDENTIALS_DIRECTORY}/password"
    assert options["--key"] == "${CREDENTIALS_DIRECTORY}/server.key"
    assert "--password" not in argv, "the password would show in ps"
    assert options["--db"].startswith("/var/lib/gwebhook/")
    # systemd must not SIGKILL the drain that --shutdown-timeout allows.
    drain = int(options.get("--shutdown-timeout", 30))
    assert int(one["TimeoutStopSec"].rstrip("s")) > drain

    sockets = unit_settings(UNITS / "gwebhook.socket")
    assert sockets["ListenStream"], "the socket unit listens on nothing"


def test_service_unit_leaves_tls_the_memory_it_needs():
    """
    The unit does not deny writable and executable memory: pyOpenSSL's
    callbacks (ALPN among them) are cffi closures made in such memory, and
    without it every TLS handshake fails.
    """
    unit = unit_settings(UNITS / "gwebhook.service")
    denied = unit.get("MemoryDenyWriteExecute", ["no"])[-1].lower()
    assert denied in ("no", "false", "off", "0"), "MemoryDenyWriteExecute= breaks TLS"


def test_unit_exec_start_runs_as_written(tmp_path, pki, spawn, notify_socket):
    """The unit's ExecStart, paths moved into tmp, starts a daemon that stores."""
    state = tmp_path / "state"
    credentials = tmp_path / "credentials"
    state.mkdir()
    credentials.mkdir()
    (credentials / "password").write_text("unit-secret\n")  # as an editor saves it
    shutil.copyfile(pki.key, credentials / "server.key")
    shutil.copyfile(pki.cert, credentials / "server.crt")
    port = free_port()

    exec_start = unit_settings(UNITS / "gwebhook.service")["ExecStart"][-1]
    for unit_path, here in [
        (UNIT_TWISTD, TWISTD),
        ("${CREDENTIALS_DIRECTORY}", str(credentials)),
        ("/var/lib/gwebhook", str(state)),
    ]:
        exec_start = exec_start.replace(unit_path, here)
    argv = shlex.split(exec_start)
    argv[argv.index("--port") + 1] = str(port)

    d = spawn(
        argv=argv,
        port=port,
        directory=state,  # WorkingDirectory=
        env={"NOTIFY_SOCKET": str(notify_socket.path)},
        start=False,
    )
    assert notify_socket.receive(15).get("READY") == "1", d.output()
    reply = d.request(
        body=b'{"name": "from the unit"}', headers=basic("webhook", "unit-secret")
    )
    assert reply.status == 200, reply.body
    assert (
        d.request(body=b"{}", headers=basic("webhook", "unit-secret\n")).status == 401
    )
    assert d.terminate()[0] == -signal.SIGTERM
    with sqlite3.connect(state / "gwebhook.sqlite") as db:
        assert db.execute("SELECT name FROM incidents").fetchall() == [
            ("from the unit",)
        ]
