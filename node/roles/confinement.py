"""Confining the daemon itself under the DockLock policy of its roles.

Applied once, right after start-up has read the config and the key and
taken the data-directory lock, and before anything starts a thread or
parses a byte from a peer: from then on the process can read and write only
its data directory (plus the read-only runtime), cannot exec, ptrace or
mount, and a compromised parser cannot reach other nodes' keys.
"""

from __future__ import annotations

from typing import Any

import structlog

from node.base.config import NodeConfig
from node.base.errors import ConfigError, UserError

log = structlog.get_logger("metanode.daemon")


def service_policy_name(config: NodeConfig) -> str | None:
    """The policy the daemon runs under, or None when confinement is off."""
    name = config.cage["service_policy"]
    if name == "none":
        return None
    if name == "auto":
        return "processing" if "processing" in config.roles else "gateway"
    return name


def confine_daemon(config: NodeConfig) -> dict[str, Any] | None:
    """Confine the current process; returns what is in force for node_status."""
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
        applied = confine_service(policies[name], data_dir=config.data_dir, allow_network=True)
    except CageError as exc:
        raise UserError(f"{config.path}: [cage] service_policy {name!r}: {exc}", exit_code=2) from None
    log.info("daemon confined", policy=name, layers=list(applied.layers), missing=list(applied.missing))
    return applied.to_dict()
