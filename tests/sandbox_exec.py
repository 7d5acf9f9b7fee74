"""
Run a command confined as a systemd unit's ``[Service]`` settings ask, as far
as that can be had without systemd: the wrapper ``test_sandbox.py`` starts
``twistd`` through.  Linux on x86-64, run as root; it reads the unit, sets
up what it says, and ``execv``s the command.

    sandbox_exec.py --unit gwebhook.service --state DIR [--keep DIR]... -- COMMAND...

Each setting and what stands for it here:

- ``ProtectSystem=strict``: a mount namespace of its own in which every
  mount is read-only but the state directory (``--state``, the unit's
  ``StateDirectory=``), ``/dev``, ``/proc`` and the private ``/tmp``;
- ``PrivateTmp=``: empty ``/tmp`` and ``/var/tmp``; ``PrivateDevices=``: a
  ``/dev`` holding only the pseudo-devices; ``ProtectHome=yes``: ``/root``,
  ``/home`` and ``/run/user`` emptied.  ``--keep`` directories (the
  interpreter, the credentials) are put back, read-only, where those hide
  them;
- ``ProtectKernelTunables=``: ``/proc/sys`` and ``/sys`` read-only;
  ``ProtectControlGroups=``: ``/sys/fs/cgroup`` read-only;
- ``LimitNOFILE=``, ``UMask=``: ``setrlimit``, ``umask``;
- ``CapabilityBoundingSet=``: every other capability dropped from the
  bounding set; ``NoNewPrivileges=``: ``PR_SET_NO_NEW_PRIVS``;
  ``DynamicUser=``: the uid and gid ``--user`` (default: nobody's, 65534);
- ``SystemCallArchitectures=native``, ``RestrictAddressFamilies=``,
  ``RestrictNamespaces=``, ``LockPersonality=``: one seccomp filter (x86-64
  system calls only; ``socket`` of the listed families only, else
  EAFNOSUPPORT; no new namespace, EPERM; no personality change, EPERM);
- ``MemoryDenyWriteExecute=``: the kernel's own ``PR_SET_MDWE`` (Linux 6.3),
  which refuses memory both writable and executable as systemd's filter does.

Not reproduced, and said so by ``plan``: ``ProtectKernelModules=`` (the
bounding set already lacks CAP_SYS_MODULE) and ``AmbientCapabilities=``
(the tests bind ports above 1024).  Any other setting that is not plainly
about starting the service makes ``plan`` fail: a new hardening line in the
unit must be reproduced here, or listed as not reproduced, before the tests
pass again.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import resource
import struct
import sys
from dataclasses import dataclass, field

libc = ctypes.CDLL(None, use_errno=True)

# Settings that say how to start, stop and restart the service, not what it may do.
NOT_CONFINEMENT = {
    "Type", "NotifyAccess", "User", "Group", "StateDirectory", "WorkingDirectory",
    "LoadCredential", "ExecStart", "ExecReload", "ExecStop", "TimeoutStopSec",
    "TimeoutStartSec", "SuccessExitStatus", "Restart", "RestartSec", "Environment",
}  # fmt: skip
NOT_REPRODUCED = {
    "ProtectKernelModules": "the bounding set already lacks CAP_SYS_MODULE",
    "AmbientCapabilities": "the tests bind ports above 1024",
}
TRUE = {"yes", "true", "on", "1"}
FALSE = {"no", "false", "off", "0"}

CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER",
    "CAP_FSETID", "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
    "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD",
    "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
]  # fmt: skip
ADDRESS_FAMILIES = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16,
                    "AF_PACKET": 17}  # fmt: skip


@dataclass
class Plan:
    """What to set up for a unit's settings."""

    read_only_system: bool = False
    private_tmp: bool = False
    private_devices: bool = False
    protect_home: bool = False
    protect_tunables: bool = False
    protect_cgroups: bool = False
    no_new_privs: bool = False
    dynamic_user: bool = False
    bounding_set: list[int] | None = None
    nofile: int | None = None
    umask: int | None = None
    native_only: bool = False
    address_families: list[int] | None = None
    restrict_namespaces: bool = False
    lock_personality: bool = False
    deny_write_execute: bool = False
    not_reproduced: dict[str, str] = field(default_factory=dict)


def service_settings(unit: str) -> dict[str, str]:
    """The ``[Service]`` section's settings, continuation lines joined, last wins."""
    settings: dict[str, str] = {}
    section = None
    with open(unit) as f:
        text = f.read().replace("\\\n", " ")
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def plan(settings: dict[str, str]) -> Plan:
    """What reproduces ``settings``; ValueError for a setting not understood."""
    p = Plan()

    def flag(key: str) -> bool:
        value = settings[key].lower()
        if value not in TRUE | FALSE:
            raise ValueError(f"{key}={settings[key]} is not reproduced here")
        return value in TRUE

    booleans = {
        "PrivateTmp": "private_tmp",
        "PrivateDevices": "private_devices",
        "ProtectKernelTunables": "protect_tunables",
        "ProtectControlGroups": "protect_cgroups",
        "NoNewPrivileges": "no_new_privs",
        "DynamicUser": "dynamic_user",
        "RestrictNamespaces": "restrict_namespaces",
        "LockPersonality": "lock_personality",
        "MemoryDenyWriteExecute": "deny_write_execute",
    }
    for key, value in settings.items():
        if key in NOT_CONFINEMENT:
            continue
        if key in NOT_REPRODUCED:
            p.not_reproduced[key] = NOT_REPRODUCED[key]
        elif key in booleans:
            setattr(p, booleans[key], flag(key))
        elif key == "ProtectSystem" and value in ("strict", *FALSE):
            p.read_only_system = value == "strict"
        elif key == "ProtectHome" and value.lower() in TRUE | FALSE:
            p.protect_home = flag(key)
        elif key == "CapabilityBoundingSet" and not value.startswith("~"):
            p.bounding_set = [CAPABILITIES.index(name) for name in value.split()]
        elif key == "LimitNOFILE" and value.isdigit():
            p.nofile = int(value)
        elif key == "UMask":
            p.umask = int(value, 8)
        elif key == "SystemCallArchitectures" and value == "native":
            p.native_only = True
        elif key == "RestrictAddressFamilies" and not value.startswith("~"):
            p.address_families = [ADDRESS_FAMILIES[name] for name in value.split()]
        else:
            raise ValueError(f"{key}={value} is not reproduced here")
    return p


# ---------------------------------------------------------------- the system


def check(result: int, what: str) -> int:
    if result == -1:
        number = ctypes.get_errno()
        raise OSError(number, f"{what}: {os.strerror(number)}")
    return result


def prctl(option: int, *args: int) -> None:
    values = [ctypes.c_ulong(a) for a in (*args, 0, 0, 0, 0)[:4]]
    check(libc.prctl(option, *values), f"prctl({option})")


CLONE_NEWNS = 0x00020000
# Every namespace flag of clone(2) (CLONE_NEWCGROUP..CLONE_NEWNET, CLONE_NEWNS);
# unshare(2) also takes CLONE_NEWTIME, 0x80.
CLONE_NAMESPACES = 0x7E020000
CLONE_NEWTIME = 0x80

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
MOUNT_OPTIONS = {
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": 0x400,
    "nodiratime": 0x800,
    "relatime": 0x200000,
}

PR_CAPBSET_DROP, PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS = 24, 22, 38
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
SECCOMP_MODE_FILTER = 2

HOMES = ("/root", "/home", "/run/user")
TEMPORARY = ("/tmp", "/var/tmp")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
NOBODY = 65534


def mount(source, target, fstype, flags, data=None) -> None:
    check(
        libc.mount(
            None if source is None else source.encode(),
            target.encode(),
            None if fstype is None else fstype.encode(),
            ctypes.c_ulong(flags),
            None if data is None else data.encode(),
        ),
        f"mount {target}",
    )


def mount_points() -> dict[str, set[str]]:
    """Each mount point of this namespace and its per-mount options (topmost)."""
    points: dict[str, set[str]] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            # Spaces and the like are octal escapes in mountinfo.
            point = fields[4].encode().decode("unicode_escape")
            points[point] = set(fields[5].split(","))
    return points


def under(path: str, tree: str) -> bool:
    return path == tree or path.startswith(tree.rstrip("/") + "/")


def remount_read_only(point: str, options: set[str]) -> None:
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY
    for name, flag in MOUNT_OPTIONS.items():
        if name in options:
            flags |= flag
    try:
        mount(None, point, None, flags)
    except OSError as e:
        # A mount hidden under one made here (the old /dev/pts): nothing to do.
        if e.errno not in (errno.ENOENT, errno.EINVAL):
            raise


def bind_back(fd: int, path: str, read_only: bool, directory: bool = True) -> None:
    """Bind what ``fd`` (O_PATH) names at ``path``, making the mount point."""
    if directory:
        os.makedirs(path, mode=0o755, exist_ok=True)
    else:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
    mount(f"/proc/self/fd/{fd}", path, None, MS_BIND)
    if read_only:
        mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)


def private_devices() -> None:
    held = {name: os.open(f"/dev/{name}", os.O_PATH) for name in DEVICES}
    mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755")
    for name, fd in held.items():
        bind_back(fd, f"/dev/{name}", read_only=False, directory=False)
        os.close(fd)
    os.mkdir("/dev/shm", 0o1777)
    mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    os.symlink("/proc/self/fd", "/dev/fd")
    for number, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{number}", f"/dev/{name}")


def confine_file_system(p: Plan, state: str, keep: list[str]) -> None:
    check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    # Held open by handle: the mounts below hide the paths they were found at.
    held = {path: os.open(path, os.O_PATH) for path in [state, *keep]}
    hidden = [*(HOMES if p.protect_home else ()), *(TEMPORARY if p.private_tmp else ())]
    for tree in hidden:
        if os.path.isdir(tree):
            mode = "1777" if tree in TEMPORARY else "0755"
            mount("tmpfs", tree, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={mode}")
    if p.private_devices:
        private_devices()
    for path in keep:
        bind_back(held[path], path, read_only=True)
    bind_back(held[state], state, read_only=False)  # last: it may be under a kept one
    for fd in held.values():
        os.close(fd)

    if p.protect_tunables:
        mount("/proc/sys", "/proc/sys", None, MS_BIND)
    writable = {state, "/proc", "/dev", "/dev/shm", *TEMPORARY}
    for point, options in mount_points().items():
        if p.read_only_system:
            read_only = point not in writable
        else:
            read_only = (p.protect_tunables and under(point, "/proc/sys")) or (
                p.protect_tunables and under(point, "/sys")
            )
            read_only |= p.protect_cgroups and under(point, "/sys/fs/cgroup")
        if read_only:
            remount_read_only(point, options)


def limit_capabilities(keep: list[int]) -> None:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        if cap not in keep:
            prctl(PR_CAPBSET_DROP, cap)


# ------------------------------------------------------------------- seccomp

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
NR = {"socket": 41, "clone": 56, "personality": 135, "unshare": 272,
      "setns": 308, "clone3": 435}  # fmt: skip
PER_LINUX, PERSONALITY_QUERY = 0, 0xFFFFFFFF
RET_ALLOW, RET_KILL_PROCESS = 0x7FFF0000, 0x80000000
LD_ABS, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
ARCH, NR_OFFSET = 4, 0


def ret_errno(number: int) -> int:
    return 0x00050000 | number


def arg(index: int) -> int:
    """Offset of a system call argument's low 32 bits (little-endian)."""
    return 16 + 8 * index


def seccomp_program(p: Plan) -> bytes:
    """The filter in classic BPF: written with labels, then jumps resolved."""
    code: list = []
    if p.native_only:
        code += [(LD_ABS, ARCH), (JEQ, AUDIT_ARCH_X86_64, None, "kill")]
    code += [(LD_ABS, NR_OFFSET)]
    if p.native_only:
        code += [(JGE, X32_SYSCALL_BIT, "kill", None)]
    if p.address_families is not None:
        code += [(JEQ, NR["socket"], "socket", None)]
    if p.restrict_namespaces:
        code += [
            (JEQ, NR["clone"], "clone", None),
            (JEQ, NR["unshare"], "unshare", None),
            (JEQ, NR["setns"], "eperm", None),
            # What systemd answers too: glibc then falls back to clone.
            (JEQ, NR["clone3"], "enosys", None),
        ]
    if p.lock_personality:
        code += [(JEQ, NR["personality"], "personality", None)]
    code += [
        (RET, RET_ALLOW),
        "socket",
        (LD_ABS, arg(0)),
        *[(JEQ, family, "allow", None) for family in p.address_families or ()],
        (RET, ret_errno(errno.EAFNOSUPPORT)),
        "clone",
        (LD_ABS, arg(0)),
        (JSET, CLONE_NAMESPACES, "eperm", "allow"),
        "unshare",
        (LD_ABS, arg(0)),
        (JSET, CLONE_NAMESPACES | CLONE_NEWTIME, "eperm", "allow"),
        "personality",
        (LD_ABS, arg(0)),
        (JEQ, PER_LINUX, "allow", None),
        (JEQ, PERSONALITY_QUERY, "allow", "eperm"),
        "allow",
        (RET, RET_ALLOW),
        "eperm",
        (RET, ret_errno(errno.EPERM)),
        "enosys",
        (RET, ret_errno(errno.ENOSYS)),
        "kill",
        (RET, RET_KILL_PROCESS),
    ]
    labels: dict[str, int] = {}
    instructions = []
    for item in code:
        if isinstance(item, str):
            labels[item] = len(instructions)
        else:
            instructions.append(item)
    out = b""
    for at, (op, k, *jumps) in enumerate(instructions):
        true, false = [
            0 if j is None else labels[j] - at - 1 for j in jumps or (None, None)
        ]
        out += struct.pack("<HBBI", op, true, false, k)
    return out


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install_seccomp(p: Plan) -> None:
    program = seccomp_program(p)
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = SockFprog(len(program) // 8, ctypes.addressof(buffer))
    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog))


# ---------------------------------------------------------------------- main


def confine(p: Plan, state: str, keep: list[str], user: int) -> None:
    """Everything ``p`` says, in this process, in the order systemd does it."""
    cwd = os.getcwd()
    confine_file_system(p, state, keep)
    os.chdir(cwd)  # the old working directory may be on the now read-only root
    if p.nofile is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (p.nofile, p.nofile))
    if p.umask is not None:
        os.umask(p.umask)
    if p.bounding_set is not None:
        limit_capabilities(p.bounding_set)
    if p.no_new_privs:
        prctl(PR_SET_NO_NEW_PRIVS, 1)
    if p.dynamic_user:
        os.setgroups([])
        os.setresgid(user, user, user)
        os.setresuid(user, user, user)
    filtered = p.address_families is not None or p.restrict_namespaces
    if p.native_only or p.lock_personality or filtered:
        if not p.no_new_privs:
            prctl(PR_SET_NO_NEW_PRIVS, 1)  # as systemd: a filter needs it
        install_seccomp(p)
    if p.deny_write_execute:
        prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(usage=__doc__.split("\n\n")[1].strip())
    parser.add_argument("--unit", required=True, help="the unit file to follow")
    parser.add_argument("--state", required=True, help="the one writable directory")
    parser.add_argument("--keep", action="append", default=[], help="kept read-only")
    parser.add_argument("--user", type=int, default=NOBODY, help="for DynamicUser=")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="after --")
    options = parser.parse_args(argv)
    command = options.command[1:] if options.command[:1] == ["--"] else options.command
    if not command:
        parser.error("no command given (put it after --)")

    p = plan(service_settings(options.unit))
    keep = [os.path.realpath(path) for path in options.keep]
    confine(p, os.path.realpath(options.state), keep, options.user)
    os.execv(command[0], command)  # noqa: S606 (a wrapper: the command is the point)


if __name__ == "__main__":
    main(sys.argv[1:])
