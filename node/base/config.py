"""Node configuration: a TOML file, a schema, and errors that say exactly what is wrong.

Every key is declared in :data:`NODE_CONFIG` (node/base/schema.py) with its
type, default and range; what a schema cannot say (a multiaddr parses, a
``HOST:PORT`` is loopback, the key file is usable) is a named check. An
unknown key, a wrong type, a bad multiaddr or an unreadable key file is
reported as ``FILE: [section] key: expected ..., got ...`` (ConfigError, exit
code 2). Relative paths are relative to the config file's directory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.base.errors import ConfigError
from node.base.schema import REQUIRED, Array, Invalid, Key, Schema, Table, expected, read_toml

ROLES = ("validator", "scheduler", "gateway", "processing", "storage")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("console", "json")
_HEX64 = r"[0-9a-f]{64}"


def _multiaddr_problem(text: str, *, need_peer_id: bool) -> str | None:
    import multiaddr  # light; keeps the config loader importable alone

    try:
        addr = multiaddr.Multiaddr(text)
    except Exception as exc:
        return f"a multiaddr such as /ip4/127.0.0.1/tcp/7001 ({exc})"
    names = [p.name for p in addr.protocols()]
    if not names or names[0] not in ("ip4", "ip6", "dns", "dns4", "dns6") or "tcp" not in names:
        return "a TCP multiaddr such as /ip4/127.0.0.1/tcp/7001"
    if need_peer_id and "p2p" not in names:
        return "a multiaddr ending in /p2p/<peer id>"
    if not need_peer_id and "p2p" in names:
        return "a listen multiaddr without /p2p/"
    return None


def _host_port(text: str) -> bool:
    """``HOST:PORT`` as [metrics] listen and [services] http_listen take it."""
    return bool(re.fullmatch(r"[0-9a-zA-Z.\-]+:[0-9]{1,5}", text)) and int(text.rsplit(":", 1)[1]) <= 65535


def _loopback(host: str) -> bool:
    import ipaddress

    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- checks a schema cannot express (run in this order, after the schema) ----------------------------------------

def _multiaddrs_parse(values: dict[str, Any]) -> None:
    for key, need_peer_id in (("listen", False), ("persistent_peers", True)):
        for i, text in enumerate(values["network"][key]):
            problem = _multiaddr_problem(text, need_peer_id=need_peer_id)
            if problem:
                raise Invalid(("network", key, i), expected(problem, text))


def _redial_cap_not_below_base(values: dict[str, Any]) -> None:
    net = values["network"]
    if net["redial_backoff_cap"] < net["redial_backoff_base"]:
        raise Invalid(("network", "redial_backoff_cap"),
                      expected(f"at least redial_backoff_base ({net['redial_backoff_base']})", net["redial_backoff_cap"]))


def _metrics_listen_is_host_port(values: dict[str, Any]) -> None:
    listen = values["metrics"]["listen"]
    if listen and not _host_port(listen):
        raise Invalid(("metrics", "listen"), expected('"HOST:PORT" such as "127.0.0.1:9101"', listen))


def _http_listen_is_loopback_host_port(values: dict[str, Any]) -> None:
    services = values["services"]
    http = services["http_listen"]
    if http and not _host_port(http):
        raise Invalid(("services", "http_listen"), expected('"HOST:PORT" such as "127.0.0.1:8080"', http))
    if http and not services["http_allow_remote"] and not _loopback(http.rsplit(":", 1)[0]):
        raise Invalid(("services", "http_listen"), f"{http!r} is not a loopback address; the HTTP gateway has no TLS, "
                      "so bind it to 127.0.0.1 (or set http_allow_remote = true behind a TLS proxy)")


def _pending_per_ip_within_total(values: dict[str, Any]) -> None:
    limits = values["limits"]
    if limits["max_pending_per_ip"] > limits["max_pending_connections"]:
        raise Invalid(("limits", "max_pending_per_ip"), expected(
            f"at most max_pending_connections ({limits['max_pending_connections']})", limits["max_pending_per_ip"]))


def _seconds(default: float, doc: str = "", *, at_least: float | None = None) -> Key:
    if at_least is None:
        return Key(float, default, doc, gt=0)
    return Key(float, default, doc, ge=at_least, unit="seconds")


NODE_CONFIG = Schema(
    Table({
        "node": Table({
            "identity_key": Key(str, REQUIRED, "path of the node's Ed25519 key file"),
            "data_dir": Key(str, REQUIRED, "directory for node.duckdb, blobs and the safety state"),
            "roles": Array(Key(str, choices=ROLES), [], "roles this node runs", unique=True, noun="role"),
            "moniker": Key(str, "", "a human-readable name"),
        }),
        "network": Table({
            "listen": Array(Key(str), ["/ip4/127.0.0.1/tcp/7001"], min_items=1, noun="listen multiaddr"),
            "persistent_peers": Array(Key(str), [], noun="peer multiaddr"),
            "keepalive_interval": _seconds(5.0, at_least=0.1),
            "keepalive_timeout": _seconds(10.0, at_least=0.1),
            "dial_timeout": _seconds(5.0),
            "redial_backoff_base": _seconds(0.5),
            "redial_backoff_cap": _seconds(30.0),
        }),
        "limits": Table({
            "max_frame_bytes": Key(int, 4 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024),
            "max_peers": Key(int, 64, ge=1, le=10_000),
            "rpc_rate_per_peer": Key(float, 200.0, "sustained RPC requests per second per peer", gt=0),
            "rpc_burst_per_peer": Key(int, 400, gt=0),
            # Calls, not frames: a batch of n calls costs n (node/p2p/ratelimit.py).
            "rpc_rate_total": Key(float, 1000.0, "sustained RPC calls per second from all peers together", gt=0),
            "rpc_burst_total": Key(int, 2000, "RPC calls all peers together may make at once", gt=0),
            "request_timeout": _seconds(30.0, "deadline of every RPC request (a batch: of the whole batch), seconds"),
            # RPC streams (node/p2p/rpc.py StreamLimits).
            "max_streams_per_connection": Key(int, 32, "RPC streams one connection may hold open", ge=1, le=10_000),
            "max_streams_per_peer": Key(int, 64, "RPC streams one peer may hold open over all its connections",
                                        ge=1, le=10_000),
            "stream_idle_timeout": Key(float, 30.0, "an RPC stream that completes no request within this (and has none "
                                       "running, or leaves a frame half sent) is closed", ge=0.1, le=3600, unit="seconds"),
            # Connections before authentication (node/p2p/admission.py ConnectionAdmission).
            "max_pending_connections": Key(int, 64, "inbound connections still in their Noise + yamux handshake",
                                           ge=1, le=10_000),
            "max_pending_per_ip": Key(int, 32, "of max_pending_connections, from one source address", ge=1, le=10_000),
            "handshake_timeout": Key(float, 5.0, "a connection not authenticated within this is closed",
                                     ge=0.1, le=120, unit="seconds"),
        }),
        "log": Table({
            "level": Key(str, "info", choices=LOG_LEVELS),
            "format": Key(str, "console", choices=LOG_FORMATS),
        }),
        "consensus": Table({
            "genesis": Key(str, "", "genesis file of the chain this node follows; empty: no chain (transport only)"),
            "mempool_max_txs": Key(int, 10_000, ge=1, le=1_000_000),
            "mempool_max_bytes": Key(int, 64 * 1024 * 1024, ge=1024, le=4 * 1024**3),
            "double_sign_check_height": Key(int, 2, "a validator started without its safety state (wiped data "
                                            "directory) signs only after syncing and watching this many heights "
                                            "finalised without it", ge=0, le=1000),
            "unsafe_sign_immediately": Key(bool, False, "sign at once even without safety state (risks a double "
                                           "sign after a wipe; a new chain at height 0 never needs it)"),
        }),
        "services": Table({
            "processing_capacity": Key(int, 2, "jobs weight this node declares on chain (processing role)", ge=1, le=64),
            "gateway_jobs_per_minute": Key(float, 120.0, "job submissions per tenant per minute", gt=0),
            "gateway_tenants": Array(Key(str, pattern=_HEX64, expect="a public key of 64 lowercase hex characters"), [],
                                     "tenant public keys (64 hex) allowed on this gateway; empty: open registration",
                                     noun="tenant public key"),
            "storage_replicas": Key(int, 2, "storage nodes that must hold each dataset", ge=1, le=16),
            "storage_quota_bytes": Key(int, 8 * 1024**3, "bytes each tenant may store on this node", gt=0),
            "max_blob_bytes": Key(int, 4 * 1024**3, "largest dataset (or result) this node stores", ge=1024, le=16 * 1024**3),
            # Replica repair (node/roles/storage/repair.py).
            "storage_repair_interval_s": Key(float, 30.0, "how often the replicas this node holds are checked "
                                             "(a quarantine triggers a check at once)", ge=0.2, le=3600, unit="seconds"),
            "storage_repair_concurrency": Key(int, 2, "replicas fetched again at the same time", ge=1, le=16),
            "storage_repair_bytes_per_s": Key(int, 32 * 1024**2, "bandwidth of replica repair fetches",
                                              ge=64 * 1024, le=16 * 1024**3),
            "storage_scrub_bytes_per_s": Key(int, 4 * 1024**2, "held replicas re-hashed per second, in the background",
                                             ge=64 * 1024, le=16 * 1024**3),
            "http_listen": Key(str, "", 'HTTP gateway "HOST:PORT" (gateway role; e.g. "127.0.0.1:8080"); empty: off'),
            "http_allow_remote": Key(bool, False, "let http_listen name a non-loopback host (put TLS in front of it)"),
            "http_max_body_bytes": Key(int, 256 * 1024**2, "largest dataset upload over HTTP", ge=1024, le=16 * 1024**3),
        }),
        "metrics": Table({
            "listen": Key(str, "", 'Prometheus metrics "HOST:PORT" (e.g. "127.0.0.1:9101"); empty: off, since a fixed '
                          "default port would collide between nodes on one machine"),
        }),
        "cage": Table({
            "service_policy": Key(str, "auto", 'policy confining the daemon itself: "auto" (processing if the node has that '
                                  'role, else gateway), a policy name, or "none"'),
            "policies_file": Key(str, "", "cage policy file; empty means the shipped config/policies.toml"),
        }),
        "debug": Table({
            "enable_debug_rpc": Key(bool, False, "expose debug_* RPC methods (tests only)"),
        }),
    }),
    checks=[_multiaddrs_parse, _redial_cap_not_below_base, _metrics_listen_is_host_port, _http_listen_is_loopback_host_port,
            _pending_per_ip_within_total],
)


@dataclass
class NodeConfig:
    path: Path
    identity_key: Path
    data_dir: Path
    roles: list[str]
    moniker: str
    network: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    log: dict[str, Any] = field(default_factory=dict)
    consensus: dict[str, Any] = field(default_factory=dict)
    services: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    cage: dict[str, Any] = field(default_factory=dict)
    debug: dict[str, Any] = field(default_factory=dict)


# The planning documents' cluster configuration: consortium-wide, so it lives in
# the genesis file (node/consensus/genesis.py), which every node reads alike.
CONSORTIUM_SECTIONS = ("cluster", "scheduler", "service_mesh")


def _no_consortium_sections(doc: dict[str, Any], path: Path) -> None:
    for section in CONSORTIUM_SECTIONS:
        if section in doc:
            raise ConfigError(
                f"{path}: [{section}] is consortium-wide, not a node setting: put it in the genesis file "
                "([consensus] genesis), where every node reads the same value (docs/config.md)")


def parse_config(doc: dict[str, Any], path: Path) -> NodeConfig:
    """Validate a parsed TOML document against :data:`NODE_CONFIG`."""
    _no_consortium_sections(doc, path)
    values = NODE_CONFIG.validate(doc, str(path))
    base = path.parent
    node = values["node"]
    genesis, policies = values["consensus"]["genesis"], values["cage"]["policies_file"]
    return NodeConfig(
        path=path,
        identity_key=(base / node["identity_key"]).resolve(),
        data_dir=(base / node["data_dir"]).resolve(),
        roles=list(node["roles"]),
        moniker=node["moniker"],
        network=values["network"],
        limits=values["limits"],
        log=values["log"],
        services=values["services"],
        metrics=values["metrics"],
        consensus={**values["consensus"], "genesis": (base / genesis).resolve() if genesis else None},
        cage={**values["cage"], "policies_file": (base / policies).resolve() if policies else None},
        debug=values["debug"],
    )


def _identity_key_is_usable(config: NodeConfig) -> None:
    from node.base.keys import Identity, KeyFileError

    try:
        Identity.load(config.identity_key)
    except KeyFileError as exc:
        raise Invalid(("node", "identity_key"), str(exc)) from None


def _validator_has_genesis(config: NodeConfig) -> None:
    if "validator" in config.roles and config.consensus["genesis"] is None:
        raise Invalid(("consensus", "genesis"), "is required for a node with the validator role", joined=" ")


def load_config(path: str | Path) -> NodeConfig:
    """Read and validate a node config file; then check what needs the disk
    (the key file is usable) and what needs the resolved paths."""
    path = Path(path)
    config = parse_config(read_toml(path, "config file"), path)
    NODE_CONFIG.check(config, str(path), [_identity_key_is_usable, _validator_has_genesis])
    return config
