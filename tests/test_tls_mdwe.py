"""
Where no memory may be both writable and executable (systemd's
MemoryDenyWriteExecute=, the kernel's PR_SET_MDWE), pyOpenSSL cannot make
the callbacks TLS needs.  gwebhook then refuses to start with one line that
says so, instead of announcing itself ready and failing every handshake.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TWISTD = str(Path(sys.executable).with_name("twistd"))

# prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN), then exec the rest of argv.
DENY_WRITE_EXECUTE = """\
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_MDWE): " + os.strerror(ctypes.get_errno()))
os.execv(sys.argv[1], sys.argv[1:])
"""


def mdwe_supported() -> bool:
    """Whether this kernel has PR_SET_MDWE (Linux 6.3), asked in a child process."""
    if sys.platform != "linux":
        return False
    probe = "import ctypes; raise SystemExit(ctypes.CDLL(None).prctl(65, 1, 0, 0, 0))"
    return subprocess.run([sys.executable, "-c", probe], timeout=30).returncode == 0


pytestmark = pytest.mark.skipif(
    not mdwe_supported(), reason="the kernel has no PR_SET_MDWE (Linux 6.3 and later)"
)


@pytest.mark.process
def test_the_restriction_is_real_here():
    """Under the wrapper, cffi cannot make a callback (what TLS runs into)."""
    done = subprocess.run(
        [sys.executable, "-c", DENY_WRITE_EXECUTE, sys.executable, "-c",
         "import cffi; cffi.FFI().callback('int(int)', abs)"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode != 0
    assert "write+execute" in done.stderr, done.stderr


@pytest.mark.process
def test_daemon_refuses_to_start_in_one_line(tmp_path, pki):
    """twistd gwebhook under PR_SET_MDWE exits non-zero, its last line naming the
    restriction and how to lift it, with no traceback."""
    done = subprocess.run(
        [sys.executable, "-c", DENY_WRITE_EXECUTE, TWISTD, "-n", "--pidfile=",
         "gwebhook", "--interface", "127.0.0.1", "--port", "0",
         "--db", str(tmp_path / "gwebhook.sqlite"), "--cert", str(pki.cert),
         "--key", str(pki.key), "--username", "admin", "--password", "pw"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    last = [line for line in output.splitlines() if line.strip()][-1]
    assert "MemoryDenyWriteExecute=" in last and "PR_SET_MDWE" in last, last
    assert "Traceback" not in output, output
