"""
Moved to the ``support`` package.  Kept only for test_systemd.py, whose
imports are to become ``support.*`` ones; then this module goes.
"""

from support.credentials import basic  # noqa: F401
from support.pki import leaf_fingerprint, sha256  # noqa: F401
from support.proc import listening_sockets  # noqa: F401
from support.systemd import NotifySocket  # noqa: F401
