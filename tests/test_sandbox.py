"""
gwebhook confined as ``systemd/gwebhook.service`` confines it, without
systemd: ``sandbox_exec.py`` reads the unit and sets up what its hardening
settings ask (a read-only file system but the state directory, private
``/tmp`` and ``/dev``, hidden homes, no_new_privs, one capability, an
unprivileged user, the open-files limit and umask, a seccomp filter), then
execs a real ``twistd gwebhook``, which must serve TLS through all of it.

Needs root on Linux x86-64 (mount namespaces, a bounding set to drop, a
user to become); elsewhere these tests are skipped.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import platform
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import sandbox_exec

REPOSITORY = Path(__file__).resolve().parent.parent
UNIT = REPOSITORY / "systemd" / "gwebhook.service"
WRAPPER = Path(sandbox_exec.__file__)
# What PrivateDevices= leaves in /dev, as the wrapper makes it.
PRIVATE_DEV = ["fd", "full", "null", "random", "shm", "stderr", "stdin", "stdout",
               "tty", "urandom", "zero"]  # fmt: skip
AUTH = ["--username", "admin", "--password", "pw"]
HEADERS = {"Authorization": "Basic " + base64.b64encode(b"admin:pw").decode()}

pytestmark = pytest.mark.skipif(
    sys.platform != "linux"
    or platform.machine() != "x86_64"
    or os.geteuid() != 0
    or "Seccomp:" not in Path("/proc/self/status").read_text(),
    reason="the sandbox needs root on Linux x86-64 with seccomp",
)

# Run inside the sandbox by the interpreter the daemon uses: what it can and
# cannot do, as JSON on stdout.
PROBE = r"""
import ctypes, json, os, resource, socket, sys
libc = ctypes.CDLL(None, use_errno=True)

def errno_of(call):
    try:
        if call() == -1:
            return ctypes.get_errno()
    except OSError as e:
        return e.errno
    return 0

def new_socket(family, kind):
    socket.socket(family, kind).close()

def write(path):
    with open(path, "w") as f:
        f.write("x")

status = dict(
    line.split(":\t", 1) for line in open("/proc/self/status") if ":\t" in line
)
print(json.dumps({
    "netlink": errno_of(lambda: new_socket(socket.AF_NETLINK, socket.SOCK_RAW)),
    "inet6": errno_of(lambda: new_socket(socket.AF_INET6, socket.SOCK_STREAM)),
    "unix": errno_of(lambda: new_socket(socket.AF_UNIX, socket.SOCK_STREAM)),
    "unshare": errno_of(lambda: libc.unshare(0x10000000)),  # CLONE_NEWUSER
    "personality": errno_of(lambda: libc.personality(0x0008)),  # PER_LINUX32
    "write_code": errno_of(lambda: write(sys.argv[1] + "/probe")),
    "write_state": errno_of(lambda: write("probe")),
    "write_sysctl": errno_of(lambda: write("/proc/sys/kernel/hostname")),
    "state_mode": os.stat("probe").st_mode & 0o777,
    "root": os.listdir("/root"),
    "dev": sorted(os.listdir("/dev")),
    "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
    "uid": os.getuid(),
    "no_new_privs": status["NoNewPrivs"].strip(),
    "seccomp": status["Seccomp"].strip(),
    "bounding_set": int(status["CapBnd"], 16),
    "version": sys.version,
}))
"""


@dataclasses.dataclass
class Sandbox:
    """The state and credentials directories, and the wrapper's command line."""

    state: Path
    credentials: Path

    def kept(self) -> list[str]:
        # The interpreter and the code may live where ProtectHome= or
        # PrivateTmp= hide things (here: /root/.pyenv): put them back.
        return sorted(
            {sys.base_prefix, sys.prefix, str(REPOSITORY), str(self.credentials)}
        )

    def wrapper(self) -> list[str]:
        keep = [f"--keep={path}" for path in self.kept()]
        return [sys.executable, str(WRAPPER), f"--unit={UNIT}",
                f"--state={self.state}", *keep, "--"]  # fmt: skip


@pytest.fixture
def sandbox(tmp_path, pki) -> Sandbox:
    """A state directory and credentials owned by the unprivileged user, as systemd
    makes them."""
    state, credentials = tmp_path / "state", tmp_path / "credentials"
    state.mkdir(mode=0o700)
    credentials.mkdir(mode=0o500)
    for source, name in [(pki.cert, "server.crt"), (pki.key, "server.key")]:
        shutil.copyfile(source, credentials / name)
        (credentials / name).chmod(0o400)
    for path in [state, credentials, *credentials.iterdir()]:
        os.chown(path, sandbox_exec.NOBODY, sandbox_exec.NOBODY)
    return Sandbox(state, credentials)


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return {
            key: value.strip() for key, _, value in (line.partition(":") for line in f)
        }


def test_the_unit_names_only_settings_the_sandbox_understands():
    """Every hardening setting of the unit is reproduced here, or said not to be."""
    plan = sandbox_exec.plan(sandbox_exec.service_settings(str(UNIT)))
    assert set(plan.not_reproduced) <= {"ProtectKernelModules", "AmbientCapabilities"}
    assert plan.read_only_system and plan.private_tmp and plan.private_devices
    assert plan.no_new_privs and plan.dynamic_user
    assert plan.bounding_set == [
        sandbox_exec.CAPABILITIES.index("CAP_NET_BIND_SERVICE")
    ]


@pytest.mark.process
def test_inside_the_sandbox_the_units_restrictions_hold(sandbox):
    """A process in the sandbox cannot write outside its state, open other socket
    families, make namespaces or change personality; it is nobody with one
    capability."""
    done = subprocess.run(
        [*sandbox.wrapper(), sys.executable, "-c", PROBE, str(REPOSITORY)],
        cwd=sandbox.state,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)

    assert seen["version"] == sys.version  # the same interpreter, put back
    assert seen["netlink"] == 97  # EAFNOSUPPORT: RestrictAddressFamilies=
    assert seen["inet6"] == seen["unix"] == 0
    assert seen["unshare"] == 1  # EPERM: RestrictNamespaces=
    assert seen["personality"] == 1  # EPERM: LockPersonality=
    assert seen["write_code"] == 30  # EROFS: ProtectSystem=strict
    assert seen["write_sysctl"] == 30  # EROFS: ProtectKernelTunables=
    assert seen["write_state"] == 0
    assert seen["state_mode"] == 0o600  # UMask=0077
    # ProtectHome=: nothing left of /root but what was put back.
    under_root = {
        Path(path).relative_to("/root").parts[0]
        for path in sandbox.kept()
        if path.startswith("/root/")
    }
    assert sorted(seen["root"]) == sorted(under_root)
    assert seen["dev"] == PRIVATE_DEV  # PrivateDevices=
    assert seen["nofile"] == [4096, 4096]  # LimitNOFILE=
    assert seen["uid"] == sandbox_exec.NOBODY  # DynamicUser=
    assert seen["no_new_privs"] == "1"  # NoNewPrivileges=
    assert seen["seccomp"] == "2"  # a filter is installed
    assert seen["bounding_set"] == 1 << 10  # CapabilityBoundingSet=
    assert not (REPOSITORY / "probe").exists()


def test_daemon_confined_as_the_unit_says_serves_a_webhook_over_tls(
    spawn, pki, sandbox
):
    """twistd gwebhook under the unit's own confinement answers a POST over TLS
    with 200 and stores the incident."""
    served = dataclasses.replace(
        pki,
        cert=sandbox.credentials / "server.crt",
        key=sandbox.credentials / "server.key",
    )
    d = spawn(*AUTH, pki=served, directory=sandbox.state, wrapper=sandbox.wrapper())

    reply = d.request(body=b'{"name": "confined"}', headers=HEADERS)
    assert reply.status == 200, (reply.body, d.output())
    [incident] = reply.json()
    assert incident["name"] == "confined"

    status = proc_status(d.process.pid)
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    assert status["Uid"].split()[0] == str(sandbox_exec.NOBODY)
    assert stat.S_IMODE(d.db.stat().st_mode) == 0o600
    with sqlite3.connect(d.db) as db:
        assert db.execute("SELECT name FROM incidents").fetchall() == [("confined",)]
