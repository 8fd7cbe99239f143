"""Confining a running service (the daemon itself) under a policy.

:func:`confine_service` restricts the *current* process: the filesystem to
the node's data directory (read-write) plus the runtime and any extra
read-only paths, no exec anywhere, and seccomp denying exec, ptrace, mount
and namespace changes (and sockets, if the network is not allowed). A
compromised parser can then neither read another node's keys nor start a
program.

Threads: Landlock restricts only the calling thread and threads created
after it. This function therefore refuses to run while the process has
more than one thread. Call it from the main thread after start-up
(config and keys read, the cage pool started) and BEFORE anything starts
threads: before ``duckdb.connect()`` on the node database (DuckDB starts
its worker threads at connect), and before the first
``trio.to_thread.run_sync`` (trio starts its thread cache lazily, so
calling this at the top of the trio main function is fine). The seccomp
filter is also loaded with TSYNC, which would cover every thread anyway.

Services keep their network (the daemon must talk p2p) unless the caller
says otherwise, and are never given CPU, address-space or file-size limits
(a long-running daemon would be killed by them); only open files and core
dumps are limited.
"""

from __future__ import annotations

import errno
import os
import resource
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.cage import layers as L
from node.cage.job import CageError
from node.cage.policy import Policy, missing_layers

SERVICE_DENY = ("exec", "ptrace", "mount", "namespace")
# Name-service and entropy files a networked Python service reads.
SERVICE_READ_PATHS = (
    "/etc/hosts", "/etc/resolv.conf", "/etc/nsswitch.conf", "/etc/gai.conf", "/etc/services",
    "/etc/protocols", "/etc/host.conf", "/etc/ssl", "/dev/urandom", "/proc/self", "/proc/sys/net",
)
SERVICE_WRITE_PATHS = ("/dev/null",)


@dataclass(frozen=True)
class AppliedConfinement:
    """What :func:`confine_service` put in force (for ``node_status``)."""

    policy: str
    enforcement_level: str
    layers: tuple[str, ...]
    missing: tuple[str, ...]
    network: str
    data_dir: str
    read_paths: tuple[str, ...] = field(default=())
    denied_syscalls: tuple[str, ...] = field(default=())
    landlock_abi: int = 0
    open_files: int | None = None
    allowed_syscalls: tuple[str, ...] | None = None  # the policy's allow-list, when it has one

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy, "enforcement_level": self.enforcement_level,
            "layers": list(self.layers), "missing": list(self.missing), "network": self.network,
            "data_dir": self.data_dir, "read_paths": list(self.read_paths),
            "denied_syscalls": list(self.denied_syscalls), "landlock_abi": self.landlock_abi,
            "open_files": self.open_files, "allowed_syscalls": (
                None if self.allowed_syscalls is None else list(self.allowed_syscalls)),
        }


def confine_service(
    policy: Policy,
    *,
    data_dir: str | Path,
    read_paths: Sequence[str | Path] = (),
    allow_network: bool | None = None,
    capabilities: L.HostCapabilities | None = None,
    open_files: int | None = None,
) -> AppliedConfinement:
    """Confine the current process for good (it cannot be undone).

    ``allow_network`` None follows the policy's ``network``; ``open_files``
    None follows the policy's ``open_files`` (a service with a budget of its
    own, such as the daemon, passes it: a job policy's limit is a job's). Raises CageError
    if the process already runs threads, or if the policy's level needs a
    layer this host lacks (naming it); a ``permissive`` policy applies what
    the host offers and reports the rest as missing."""
    threads = L.thread_count()
    if threads != 1:
        raise CageError(
            f"confine_service must run before any thread starts ({threads} threads exist): "
            "Landlock would not cover the others"
        )
    data = Path(data_dir).resolve()
    if not data.is_dir():
        raise CageError(f"data directory {str(data)!r} does not exist")
    network = allow_network if allow_network is not None else policy.allows_network
    caps = capabilities or L.probe_host()
    missing = missing_layers(policy, caps.layers, for_service=True)
    if missing:
        details = "; ".join(f"{m}: {caps.detail.get(m, 'unavailable')}" for m in missing)
        raise CageError(
            f"policy {policy.name!r} ({policy.enforcement_level}) cannot confine this service: "
            f"missing {', '.join(missing)} ({details})"
        )
    applied: list[str] = []
    nofile_in_force: int | None = None
    if L.LAYER_RLIMITS in caps.layers:
        nofile = policy.limits.open_files if open_files is None else open_files
        current = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        if current != resource.RLIM_INFINITY:
            nofile = min(nofile, current)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        nofile_in_force = nofile
        applied.append(L.LAYER_RLIMITS)
    extra = [str(Path(p).resolve()) for p in read_paths]
    deny = list(SERVICE_DENY)
    if not network:
        deny.append("socket")
    seccomp_filter = None
    if L.LAYER_SECCOMP in caps.layers:
        # Built before Landlock: loading libseccomp looks the C library up on disk.
        from node.cage.syscalls import build_filter

        try:
            # The policy's allow-list, if any, is enforced for services too: every
            # syscall it leaves out answers EPERM.
            seccomp_filter = build_filter(deny, [], allow=policy.syscalls, all_threads=True)
        except ValueError as exc:
            raise CageError(f"policy {policy.name!r} cannot confine this service: {exc}") from None
    if L.LAYER_LANDLOCK in caps.layers:
        L.landlock_restrict(
            L.runtime_read_paths() + list(SERVICE_READ_PATHS) + extra,
            [str(data), *SERVICE_WRITE_PATHS],
            abi=caps.landlock_abi,
        )
        applied.append(L.LAYER_LANDLOCK)
    if seccomp_filter is not None:
        L.set_no_new_privs()
        try:
            seccomp_filter.load()
        except OSError as exc:
            raise CageError(f"seccomp filter could not be loaded: {os.strerror(exc.errno or errno.EINVAL)}") from None
        applied.append(L.LAYER_SECCOMP)
    from node.cage.syscalls import expand

    return AppliedConfinement(
        policy=policy.name,
        enforcement_level=policy.enforcement_level,
        layers=tuple(applied),
        missing=tuple(layer for layer in (L.LAYER_RLIMITS, L.LAYER_LANDLOCK, L.LAYER_SECCOMP)
                      if layer not in applied),
        network="allowed" if network else "denied",
        data_dir=str(data),
        read_paths=tuple(extra),
        denied_syscalls=tuple(expand(deny)) if L.LAYER_SECCOMP in applied else (),
        allowed_syscalls=(tuple(expand(policy.syscalls))
                          if L.LAYER_SECCOMP in applied and policy.syscalls is not None else None),
        landlock_abi=caps.landlock_abi if L.LAYER_LANDLOCK in applied else 0,
        open_files=nofile_in_force,
    )
