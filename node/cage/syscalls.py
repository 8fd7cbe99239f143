"""Syscall groups of the policies' deny/kill/syscalls lists, and the seccomp filter.

Policies name *groups* (``socket``, ``random``, ``fork``, ``exec``...) or
raw syscall names. Without a ``syscalls`` allow-list the filter allows
everything the deny and kill lists do not name: the dangerous operations are
a short, stable list, while the few dozen syscalls CPython and DuckDB need
change with every libc. A policy that gives ``syscalls = [...]`` gets a real
allow-list instead: every syscall it does not list answers EPERM (its
``kill`` entries still kill). ``metanode cage check --policy NAME`` says which
syscalls a job needs that such a list lacks (:mod:`node.cage.syscall_probe`).
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from types import ModuleType
from typing import TYPE_CHECKING, Any

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
_UNKNOWN_SYSCALL = -1  # libseccomp's __NR_SCMP_ERROR; other negative numbers name another architecture's syscalls
# Jobs may never leave the process group their supervisor kills; an allow-list cannot let them.
NEVER_ALLOWED = ("session",)


def _seccomp() -> ModuleType:
    import pyseccomp  # needs the system libseccomp2; imported lazily

    return pyseccomp


def validate_rule_names(names: Iterable[str], *, any_arch: bool = False) -> None:
    """Raise ValueError naming the first entry that is neither a group nor a
    syscall this machine's libseccomp knows. ``any_arch`` (allow-lists) also
    takes a syscall of another architecture (``open`` and ``stat`` exist on
    x86_64, not on arm64): a shared policy file loads everywhere, and the
    name simply allows nothing where the syscall does not exist."""
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
        number = seccomp.resolve_syscall(seccomp.system_arch(), name)
        if number == _UNKNOWN_SYSCALL or (number < 0 and not any_arch):
            raise ValueError(
                f"{name!r} is neither a syscall group ({', '.join(GROUPS)}) nor a known syscall"
            )


def expand(names: Iterable[str]) -> list[str]:
    """Syscall names covered by a list of groups and raw names, sorted."""
    out: set[str] = set()
    for name in names:
        out.update(GROUPS.get(name, (name,)))
    return sorted(out)


def allow_list_conflict(allow: Iterable[str], deny: Iterable[str], kill: Iterable[str]) -> str | None:
    """Why an allow-list contradicts the deny/kill lists (naming the syscall), or None.

    ``clone`` is the one syscall that may be both allowed and denied: a
    denied ``fork`` group refuses only process-creating clones, and an allowed
    ``clone`` then lets threads be created. ``clone3`` passes its flags in
    memory a filter cannot read, so it cannot be allowed while fork is blocked."""
    allowed = set(expand(allow))
    for what, names in (("deny", deny), ("kill", kill)):
        blocked = set(expand(names))
        both = sorted((allowed & blocked) - {"clone"})
        if both:
            return f"{both[0]!r} is both allowed (syscalls) and in {what}"
        if "clone3" in allowed and "clone" in blocked:
            return f"'clone3' cannot be allowed while {what} blocks 'fork': its flags are out of a filter's reach"
    never = sorted(allowed & set(expand(NEVER_ALLOWED)))
    if never:
        return f"{never[0]!r} cannot be allowed: a job must stay in the process group its supervisor kills"
    return None


def build_filter(deny: Iterable[str], kill: Iterable[str], *, allow: Iterable[str] | None = None,
                 all_threads: bool = False, notify_unlisted: bool = False) -> SyscallFilter:
    """A libseccomp filter: ``deny`` answers EPERM, ``kill`` kills the process.

    ``allow`` None: everything else is allowed. An ``allow`` list: only the
    syscalls it names (groups expanded) are allowed and every other one
    answers EPERM, or, with ``notify_unlisted`` (the syscall probe), goes to a
    user-space listener (SECCOMP_RET_USER_NOTIF) that records it and lets it
    run. ``all_threads`` sets TSYNC so a process that already runs threads is
    filtered as a whole. Raises ValueError when the lists contradict each other."""
    seccomp = _seccomp()
    deny_calls, kill_calls = expand(deny), expand(kill)
    overlap = set(deny_calls) & set(kill_calls)
    if overlap:
        raise ValueError(f"syscalls both denied and killed: {', '.join(sorted(overlap))}")
    allow_calls: list[str] | None = None
    if allow is not None:
        allow = list(allow)
        conflict = allow_list_conflict(allow, deny, kill)
        if conflict:
            raise ValueError(conflict)
        allow_calls = expand(allow)
    if allow_calls is None:
        default = seccomp.ALLOW
    else:
        default = seccomp.NOTIFY if notify_unlisted else seccomp.ERRNO(errno.EPERM)
    flt = seccomp.SyscallFilter(default)
    if all_threads:
        flt.set_attr(seccomp.Attr.CTL_TSYNC, 1)

    def rule(action: int, call: str, *args: Any) -> None:
        # libseccomp refuses a rule that repeats the default action (EACCES):
        # under an allow-list a denied call is already refused by the default.
        if action != default:
            flt.add_rule(action, call, *args)

    for call in allow_calls or ():
        if call not in ("clone", "clone3"):
            rule(seccomp.ALLOW, call)
    clone_allowed = allow_calls is not None and "clone" in allow_calls
    clone_handled = False
    for action, calls in ((seccomp.ERRNO(errno.EPERM), deny_calls), (seccomp.KILL_PROCESS, kill_calls)):
        for call in calls:
            if call == "clone":
                clone_handled = True
                # Only process-creating clones: thread creation passes CLONE_THREAD.
                rule(action, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, CLONE_THREAD, 0))
                if clone_allowed:
                    rule(seccomp.ALLOW, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, CLONE_THREAD, CLONE_THREAD))
                # clone3 passes its flags in memory a filter cannot read; glibc
                # falls back to clone on ENOSYS, which the rule above then checks.
                if "clone3" not in deny_calls and "clone3" not in kill_calls:
                    rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
            else:
                rule(action, call)
    if clone_allowed and not clone_handled:
        rule(seccomp.ALLOW, "clone")
    if (allow_calls is not None and "clone3" not in allow_calls and clone_allowed and not clone_handled
            and "clone3" not in deny_calls and "clone3" not in kill_calls):
        # glibc creates threads with clone3 and falls back to clone only on ENOSYS.
        rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    if allow_calls is not None and "clone3" in allow_calls:
        rule(seccomp.ALLOW, "clone3")
    return flt
