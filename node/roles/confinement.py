"""Confining the daemon itself under the DockLock policy of its roles.

Applied once, right after start-up has read the config and the key and
taken the data-directory lock, and before anything starts a thread or
parses a byte from a peer: from then on the process can read and write only
its data directory (plus the read-only runtime), cannot exec, ptrace or
mount, and a compromised parser cannot reach other nodes' keys.

The daemon's open-file limit is its own, not a job's: :func:`daemon_fd_budget`
adds up what its configured limits let it hold (peers, pending handshakes,
DuckDB, blobs in flight, cage fork servers, the metrics and HTTP servers) plus
headroom, and :func:`fit_fd_budget` refuses to start a daemon whose budget the
OS's hard limit cannot hold. A policy's ``open_files`` stays what it is for
jobs: a daemon that took the ``processing`` job policy's 64 descriptors died of
its 48th silent TCP connection.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from node.base.config import NodeConfig
from node.base.errors import ConfigError, UserError
from node.base.keys import peer_id_from_public_key
from node.p2p.admission import ConnectionLimits

log = structlog.get_logger("metanode.daemon")

# Descriptors the daemon holds whatever its limits: the interpreter and its
# imports, stdio, the data-directory lock, trio's epoll and wake-up pipes, the
# signal socket pair, /dev/urandom, thread-pool handles (measured: ~20 on an
# idle validator; the rest is margin for libraries).
RUNTIME_FDS = 48
# DuckDB: the database and its WAL, temporary files, its extension files.
DATABASE_FDS = 24
# Dials in flight beyond one per persistent peer (blob fetches, RPC to strangers).
SPARE_DIALS = 8
# One fork server: its stdin and stdout pipes, its stderr file, one job in flight.
FDS_PER_FORK_SERVER = 4
CAGE_POOL_SIZE = 1  # node/roles/daemon.py starts one fork server
# prometheus_client's threaded server: one descriptor per scrape in flight.
METRICS_CONNECTIONS = 16
HEADROOM_SHARE = 0.15
MIN_HEADROOM = 32


@dataclass(frozen=True)
class FdBudget:
    """The daemon's open-file budget, part by part."""

    parts: tuple[tuple[str, int], ...]

    @property
    def total(self) -> int:
        return sum(n for _, n in self.parts)

    def describe(self) -> str:
        """``peers 64 + pending handshakes 64 + ... = 312``: the numbers behind a refusal."""
        return " + ".join(f"{name} {n}" for name, n in self.parts if n) + f" = {self.total}"

    def to_dict(self) -> dict[str, Any]:
        return {"limit": self.total, "parts": dict(self.parts)}


def daemon_fd_budget(config: NodeConfig) -> FdBudget:
    """What the daemon's configured limits let it hold open, with headroom."""
    from node.roles.http_gateway import MAX_CONNECTIONS as HTTP_CONNECTIONS
    from node.roles.storage.protocol import MAX_STREAMS as BLOB_STREAMS

    limits, net, roles = config.limits, config.network, set(config.roles)
    chain = config.consensus["genesis"] is not None
    http = bool(config.services["http_listen"]) and "gateway" in roles and chain
    metrics = bool(config.metrics["listen"])
    parts = [
        ("runtime", RUNTIME_FDS),
        ("listeners", len(net["listen"]) + int(metrics) + int(http)),
        ("peers", limits["max_peers"]),
        ("pending handshakes", limits["max_pending_connections"]),
        ("dials", len(net["persistent_peers"]) + SPARE_DIALS),
        ("database", DATABASE_FDS if chain else 0),
        # Served blob streams each hold one file open; as many fetches again.
        ("blobs", 2 * BLOB_STREAMS if chain and roles & {"storage", "processing"} else 0),
        ("cage", CAGE_POOL_SIZE * FDS_PER_FORK_SERVER if chain and "processing" in roles else 0),
        ("metrics", METRICS_CONNECTIONS if metrics else 0),
        # Each HTTP connection may hold an upload's spool file too.
        ("http", 2 * HTTP_CONNECTIONS if http else 0),
    ]
    subtotal = sum(n for _, n in parts)
    parts.append(("headroom", max(MIN_HEADROOM, int(subtotal * HEADROOM_SHARE))))
    return FdBudget(tuple(parts))


def fit_fd_budget(config: NodeConfig) -> FdBudget:
    """Make room for the daemon's fd budget, or refuse a config it cannot fit in.

    Raises the soft RLIMIT_NOFILE to the budget (never lowers it here:
    confinement sets it exactly) and refuses with exit code 2, naming the
    numbers, if the hard limit the OS gives this process is below it."""
    budget = daemon_fd_budget(config)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and budget.total > hard:
        raise UserError(
            f"{config.path}: [limits] need {budget.total} open files ({budget.describe()}), but this process may open "
            f"at most {hard} (hard RLIMIT_NOFILE); lower [limits] max_peers or max_pending_connections, "
            "or raise the hard limit (ulimit -Hn, systemd LimitNOFILE=)",
            exit_code=2,
        )
    if soft != resource.RLIM_INFINITY and soft < budget.total:
        resource.setrlimit(resource.RLIMIT_NOFILE, (budget.total, hard))
    return budget


def open_fd_count() -> int | None:
    """Descriptors this process holds now (None where /proc cannot say)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the one listdir itself holds
    except OSError:
        return None


def daemon_connection_limits(config: NodeConfig, validators: Sequence[bytes], own_peer_id: str) -> tuple[ConnectionLimits, frozenset[str]]:
    """The host's connection limits and the peers that may use its reserved slots.

    Privileged: the genesis validators and the persistent peers (not this
    node). Each has one slot kept for it, so strangers hold at most
    ``max_peers`` less that many. A ``max_peers`` that leaves strangers
    (clients included) no slot at all is refused (exit 2)."""
    privileged = {peer_id_from_public_key(key) for key in validators}
    privileged |= {addr.rsplit("/p2p/", 1)[1] for addr in config.network["persistent_peers"]}
    privileged.discard(own_peer_id)
    limits = config.limits
    if limits["max_peers"] <= len(privileged):
        raise UserError(
            f"{config.path}: [limits] max_peers {limits['max_peers']} leaves no slot for clients: {len(privileged)} "
            "are reserved for validators and persistent peers; raise max_peers",
            exit_code=2,
        )
    connection_limits = ConnectionLimits(
        max_peers=limits["max_peers"],
        max_pending=limits["max_pending_connections"],
        max_pending_per_ip=limits["max_pending_per_ip"],
        handshake_timeout=limits["handshake_timeout"],
        reserved_slots=len(privileged),
    )
    return connection_limits, frozenset(privileged)


def service_policy_name(config: NodeConfig) -> str | None:
    """The policy the daemon runs under, or None when confinement is off."""
    name = config.cage["service_policy"]
    if name == "none":
        return None
    if name == "auto":
        return "processing" if "processing" in config.roles else "gateway"
    return name


def confine_daemon(config: NodeConfig, *, open_files: int | None = None) -> dict[str, Any] | None:
    """Confine the current process; returns what is in force for node_status.

    ``open_files`` (the daemon's :func:`fit_fd_budget`) replaces the policy's
    own ``open_files``, which is a job's."""
    name = service_policy_name(config)
    if name is None:
        log.warning("daemon runs unconfined ([cage] service_policy = \"none\")")
        return None
    from node.cage.job import CageError
    from node.cage.policy import default_policy_path, load_policies
    from node.cage.service import confine_service

    path = config.cage["policies_file"] or default_policy_path()
    try:
        policies = load_policies(path)
    except CageError as exc:
        raise ConfigError(f"{config.path}: [cage] policies_file: {exc}") from None
    if name not in policies:
        raise ConfigError(f"{config.path}: [cage] service_policy: expected one of {sorted(policies)} or \"auto\"/\"none\", got {name!r}")
    try:
        # A daemon always needs its p2p sockets, whatever the policy says of jobs.
        applied = confine_service(policies[name], data_dir=config.data_dir, allow_network=True, open_files=open_files)
    except CageError as exc:
        raise UserError(f"{config.path}: [cage] service_policy {name!r}: {exc}", exit_code=2) from None
    log.info("daemon confined", policy=name, layers=list(applied.layers), missing=list(applied.missing))
    return applied.to_dict()
