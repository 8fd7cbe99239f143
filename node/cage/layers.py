"""The confinement layers (rlimits, namespaces, Landlock, seccomp) and a probe
of which of them this host enforces.

Everything here calls the kernel directly through ctypes: Python 3.11 has no
``os.unshare``, and the ``landlock`` package on PyPI mis-reports success as
failure (it reads a stale errno), so the three Landlock syscalls are made
here. Each layer applies to the calling thread and is inherited by threads
and processes created afterwards, so callers apply them while single-threaded.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import resource
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.cage.policy import (
    ALL_LAYERS,
    LAYER_LANDLOCK,
    LAYER_NAMESPACES,
    LAYER_RLIMITS,
    LAYER_SECCOMP,
    Limits,
)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_NO_NEW_PRIVS = 38

_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
_LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET = 1
_LANDLOCK_SCOPE_SIGNAL = 2

# Landlock filesystem access rights (include/uapi/linux/landlock.h).
FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REFER = 1 << 13
FS_TRUNCATE = 1 << 14
FS_IOCTL_DEV = 1 << 15
_FILE_ONLY = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
READ_RIGHTS = FS_READ_FILE | FS_READ_DIR


class LayerError(OSError):
    """A confinement layer could not be applied."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # the kernel struct is packed
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise LayerError(err, f"{what}: {os.strerror(err)}")
    return result


def landlock_abi() -> int:
    """The Landlock ABI version of the running kernel, 0 if unavailable."""
    result = _libc.syscall(
        _SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
        ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION),
    )
    return max(int(result), 0)


def handled_fs_rights(abi: int) -> int:
    """Every filesystem right the given ABI can restrict."""
    rights = (1 << 13) - 1  # ABI 1: EXECUTE .. MAKE_SYM
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def set_no_new_privs() -> None:
    """prctl(PR_SET_NO_NEW_PRIVS): needed by Landlock and seccomp, and stops
    set-uid binaries from ever regaining privileges."""
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


def landlock_restrict(
    read_paths: list[str], write_paths: list[str], *, abi: int, scope_signals: bool = False
) -> None:
    """Restrict the calling thread (and its future children) to reading
    ``read_paths`` and reading/writing ``write_paths``. Exec is granted
    nowhere. Paths that do not exist are skipped; a file gets file rights."""
    if abi < 1:
        raise LayerError(errno.ENOSYS, "Landlock is not available")
    handled = handled_fs_rights(abi)
    attr = _RulesetAttr(handled, 0, 0)
    size = 8
    if abi >= 6:
        # Signal scoping: a job cannot signal its supervisor or anything else
        # outside its own domain. Abstract unix sockets are scoped the same way.
        if scope_signals:
            attr.scoped = _LANDLOCK_SCOPE_SIGNAL | _LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET
        size = 24
    elif abi >= 4:
        size = 16
    ruleset = _check(
        _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size),
                      ctypes.c_uint32(0)),
        "landlock_create_ruleset",
    )
    try:
        rules = [(p, READ_RIGHTS) for p in read_paths]
        rules += [(p, handled & ~FS_EXECUTE) for p in write_paths]
        for path, rights in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                if not stat.S_ISDIR(os.fstat(fd).st_mode):
                    rights &= _FILE_ONLY
                rule = _PathBeneathAttr(rights & handled, fd)
                _check(
                    _libc.syscall(_SYS_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset),
                                  ctypes.c_int(_LANDLOCK_RULE_PATH_BENEATH), ctypes.byref(rule),
                                  ctypes.c_uint32(0)),
                    f"landlock_add_rule({path})",
                )
            finally:
                os.close(fd)
        set_no_new_privs()
        _check(_libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)),
               "landlock_restrict_self")
    finally:
        os.close(ruleset)


def unshare_user_and_network() -> None:
    """Enter new user and network namespaces. No uid map is written, so the
    process has no capability over any file or process of the host, and
    its network namespace holds only a down loopback device."""
    _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNET), "unshare(CLONE_NEWUSER|CLONE_NEWNET)")


def apply_rlimits(limits: Limits, *, cpu_already_used: float = 0.0) -> None:
    """CPU seconds (SIGXCPU at the limit, SIGKILL a second later), address
    space, file size, open files; no core dumps."""
    cpu = int(cpu_already_used) + limits.cpu_seconds
    memory = limits.memory_mb * 1024 * 1024
    output = limits.output_mb * 1024 * 1024
    for which, soft, hard in (
        (resource.RLIMIT_CORE, 0, 0),
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_AS, memory, memory),
        (resource.RLIMIT_FSIZE, output, output),
        (resource.RLIMIT_NOFILE, limits.open_files, limits.open_files),
    ):
        try:
            resource.setrlimit(which, (soft, hard))
        except (OSError, ValueError) as exc:
            raise LayerError(errno.EPERM, f"setrlimit({which}): {exc}") from None


@functools.lru_cache(maxsize=1)
def _runtime_read_paths() -> tuple[str, ...]:
    here = Path(__file__).resolve().parents[1]  # the `node` package
    paths = {
        sys.base_prefix, sys.prefix, sys.exec_prefix, str(here),
        "/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/share/zoneinfo",
        "/proc/stat", "/proc/meminfo", "/proc/self/cgroup", "/proc/self/maps",
        "/sys/devices/system/cpu", "/sys/fs/cgroup",
    }
    return tuple(sorted(paths))


def runtime_read_paths() -> list[str]:
    """What a confined Python + DuckDB needs to read: the interpreter, the
    virtualenv, this package, shared libraries, and the few /proc and /sys
    files DuckDB reads (cgroup and CPU information)."""
    return list(_runtime_read_paths())


@dataclass
class HostCapabilities:
    """Which layers this host enforces, each with a one-line reason."""

    available: dict[str, bool] = field(default_factory=dict)
    detail: dict[str, str] = field(default_factory=dict)
    landlock_abi: int = 0

    @property
    def layers(self) -> set[str]:
        return {name for name, ok in self.available.items() if ok}

    def to_value(self) -> dict[str, object]:
        return {"available": dict(self.available), "detail": dict(self.detail),
                "landlock_abi": self.landlock_abi}

    @classmethod
    def from_value(cls, value: dict[str, Any]) -> "HostCapabilities":
        """From ``to_value``'s map as decoded off the fork server's pipe."""
        return cls(dict(value["available"]), dict(value["detail"]), int(value["landlock_abi"]))


def _probe_in_child(test: Callable[[], tuple[bool, str]]) -> tuple[bool, str]:
    """Run ``test`` in a forked child (layers are irreversible) and return
    (ok, detail) from what it reports."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        ok, message = False, "probe crashed"
        try:
            os.close(read_fd)
            ok, message = test()
        except BaseException as exc:  # the child must always report and exit
            message = f"{type(exc).__name__}: {exc}"
        try:
            os.write(write_fd, (("1" if ok else "0") + message).encode()[:4000])
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 4096):
        chunks.append(chunk)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    report = b"".join(chunks).decode(errors="replace")
    if not report:
        return False, f"probe process died (wait status {status})"
    return report[0] == "1", report[1:]


def _test_rlimits() -> tuple[bool, str]:
    resource.setrlimit(resource.RLIMIT_CPU, (100, 101))
    resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))
    ok = resource.getrlimit(resource.RLIMIT_CPU) == (100, 101)
    return ok, "setrlimit CPU, AS, FSIZE, NOFILE" if ok else "setrlimit did not take effect"


def _test_namespaces() -> tuple[bool, str]:
    before = os.readlink("/proc/self/ns/net")
    unshare_user_and_network()
    ok = os.readlink("/proc/self/ns/net") != before
    return ok, "unshare(CLONE_NEWUSER|CLONE_NEWNET)" if ok else "network namespace unchanged"


def _test_landlock() -> tuple[bool, str]:
    abi = landlock_abi()
    if abi < 1:
        err = ctypes.get_errno()
        return False, f"landlock_create_ruleset: {os.strerror(err) if err else 'unsupported'}"
    landlock_restrict([], [], abi=abi)
    try:
        os.listdir("/")
    except PermissionError:
        return True, f"ABI {abi}"
    return False, f"ABI {abi} reported, but a restricted process could still list /"


def _test_seccomp() -> tuple[bool, str]:
    from node.cage.syscalls import build_filter

    set_no_new_privs()
    build_filter(["getppid"], []).load()
    ok = os.getppid() == -1
    return ok, "libseccomp filter (EPERM and kill actions)" if ok else "filter loaded but not enforced"


def probe_host() -> HostCapabilities:
    """Test each layer for real, each in its own short-lived child process."""
    caps = HostCapabilities(landlock_abi=landlock_abi())
    for layer, test in (
        (LAYER_RLIMITS, _test_rlimits),
        (LAYER_NAMESPACES, _test_namespaces),
        (LAYER_LANDLOCK, _test_landlock),
        (LAYER_SECCOMP, _test_seccomp),
    ):
        caps.available[layer], caps.detail[layer] = _probe_in_child(test)
    assert set(caps.available) == set(ALL_LAYERS)
    return caps


def thread_count() -> int:
    """Threads of the current process (Landlock cannot be applied to others)."""
    return len(os.listdir("/proc/self/task"))
