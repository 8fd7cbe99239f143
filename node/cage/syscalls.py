"""Syscall groups of the policies' deny/kill lists, and the seccomp filter.

Policies name *groups* (``socket``, ``random``, ``fork``, ``exec``...) or
raw syscall names. The filter allows everything else: an allowlist of the
few hundred syscalls CPython and DuckDB need would break on every libc
update, while the dangerous operations are a short, stable list.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyseccomp import SyscallFilter  # untyped: Any to the checker

GROUPS: dict[str, tuple[str, ...]] = {
    "socket": ("socket", "socketpair"),
    "random": ("getrandom",),
    # clone is matched on its flags (threads stay allowed); see build_filter.
    "fork": ("fork", "vfork", "clone"),
    "exec": ("execve", "execveat"),
    "ptrace": ("ptrace", "process_vm_readv", "process_vm_writev"),
    "mount": (
        "mount", "umount2", "pivot_root", "chroot", "fsopen", "fsconfig",
        "fsmount", "move_mount", "open_tree", "mount_setattr",
    ),
    "namespace": ("unshare", "setns"),
    # A job must stay in the process group the supervisor kills on timeout.
    "session": ("setsid", "setpgid"),
}

CLONE_THREAD = 0x00010000


def _seccomp() -> ModuleType:
    import pyseccomp  # needs the system libseccomp2; imported lazily

    return pyseccomp


def validate_rule_names(names: Iterable[str]) -> None:
    """Raise ValueError naming the first entry that is neither a group nor a
    syscall this machine's libseccomp knows."""
    for name in names:
        if name in GROUPS:
            continue
        try:
            seccomp = _seccomp()
        except (ImportError, OSError):
            raise ValueError(
                f"{name!r} is not a syscall group ({', '.join(GROUPS)}) and libseccomp "
                "is not available to check raw syscall names"
            ) from None
        if seccomp.resolve_syscall(seccomp.system_arch(), name) < 0:
            raise ValueError(
                f"{name!r} is neither a syscall group ({', '.join(GROUPS)}) nor a known syscall"
            )


def expand(names: Iterable[str]) -> list[str]:
    """Syscall names covered by a list of groups and raw names, sorted."""
    out: set[str] = set()
    for name in names:
        out.update(GROUPS.get(name, (name,)))
    return sorted(out)


def build_filter(deny: Iterable[str], kill: Iterable[str], *, all_threads: bool = False) -> SyscallFilter:
    """A libseccomp filter: ``deny`` answers EPERM, ``kill`` kills the process,
    everything else is allowed. ``all_threads`` sets TSYNC so a process that
    already runs threads is filtered as a whole."""
    seccomp = _seccomp()
    deny_calls, kill_calls = expand(deny), expand(kill)
    overlap = set(deny_calls) & set(kill_calls)
    if overlap:
        raise ValueError(f"syscalls both denied and killed: {', '.join(sorted(overlap))}")
    flt = seccomp.SyscallFilter(seccomp.ALLOW)
    if all_threads:
        flt.set_attr(seccomp.Attr.CTL_TSYNC, 1)
    for action, calls in ((seccomp.ERRNO(errno.EPERM), deny_calls), (seccomp.KILL_PROCESS, kill_calls)):
        for call in calls:
            if call == "clone":
                # Only process-creating clones: thread creation passes CLONE_THREAD.
                flt.add_rule(action, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, CLONE_THREAD, 0))
                # clone3 passes its flags in memory a filter cannot read; glibc
                # falls back to clone on ENOSYS, which the rule above then checks.
                if "clone3" not in deny_calls and "clone3" not in kill_calls:
                    flt.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
            else:
                flt.add_rule(action, call)
    return flt
