"""Node configuration: a TOML file, a schema, and errors that say exactly what is wrong.

Every key is declared below with its type, default and check. An unknown
key, a wrong type, a bad multiaddr or an unreadable key file is reported as
``FILE: [section] key: expected ..., got ...`` (ConfigError, exit code 2).
Relative paths are relative to the config file's directory.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.base.errors import ConfigError

ROLES = ("validator", "scheduler", "gateway", "processing", "storage")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("console", "json")


@dataclass(frozen=True)
class Field:
    type: type | tuple[type, ...]
    default: Any
    check: Callable[[Any], str | None] | None = None  # returns a problem or None
    doc: str = ""


def _positive(value: Any) -> str | None:
    return None if value > 0 else "a positive number"


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


def _multiaddr_list(*, need_peer_id: bool, at_least_one: bool) -> Callable[[list[Any]], str | None]:
    def check(value: list[Any]) -> str | None:
        if at_least_one and not value:
            return "at least one listen multiaddr"
        for item in value:
            if not isinstance(item, str):
                return "a list of multiaddr strings"
            problem = _multiaddr_problem(item, need_peer_id=need_peer_id)
            if problem:
                return f"{problem}; got {item!r}"
        return None

    return check


_listen_addrs = _multiaddr_list(need_peer_id=False, at_least_one=True)
_peer_addrs = _multiaddr_list(need_peer_id=True, at_least_one=False)


def _roles(value: list[Any]) -> str | None:
    for item in value:
        if item not in ROLES:
            return f"roles from {list(ROLES)}; got {item!r}"
    if len(set(value)) != len(value):
        return "each role at most once"
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


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"one of {list(choices)}"


SCHEMA: dict[str, dict[str, Field]] = {
    "node": {
        "identity_key": Field(str, None, doc="path of the node's Ed25519 key file"),
        "data_dir": Field(str, None, doc="directory for node.duckdb, blobs and the safety state"),
        "roles": Field(list, [], _roles, "roles this node runs"),
        "moniker": Field(str, "", doc="a human-readable name"),
    },
    "network": {
        "listen": Field(list, ["/ip4/127.0.0.1/tcp/7001"], _listen_addrs),
        "persistent_peers": Field(list, [], _peer_addrs),
        "keepalive_interval": Field((int, float), 5.0, _positive),
        "keepalive_timeout": Field((int, float), 10.0, _positive),
        "dial_timeout": Field((int, float), 5.0, _positive),
        "redial_backoff_base": Field((int, float), 0.5, _positive),
        "redial_backoff_cap": Field((int, float), 30.0, _positive),
    },
    "limits": {
        "max_frame_bytes": Field(int, 4 * 1024 * 1024, lambda v: None if 1024 <= v <= 64 * 1024 * 1024 else "between 1024 and 67108864"),
        "max_peers": Field(int, 64, lambda v: None if 1 <= v <= 10_000 else "between 1 and 10000"),
        "rpc_rate_per_peer": Field((int, float), 200.0, _positive, "sustained RPC requests per second per peer"),
        "rpc_burst_per_peer": Field(int, 400, _positive),
        "request_timeout": Field((int, float), 30.0, _positive, "deadline of every RPC request, seconds"),
    },
    "log": {
        "level": Field(str, "info", _one_of(LOG_LEVELS)),
        "format": Field(str, "console", _one_of(LOG_FORMATS)),
    },
    "consensus": {
        "genesis": Field(str, "", doc="genesis file of the chain this node follows; empty: no chain (transport only)"),
        "mempool_max_txs": Field(int, 10_000, lambda v: None if 1 <= v <= 1_000_000 else "between 1 and 1000000"),
        "mempool_max_bytes": Field(int, 64 * 1024 * 1024, lambda v: None if 1024 <= v <= 4 * 1024**3 else "between 1024 and 4294967296"),
    },
    "services": {
        "processing_capacity": Field(int, 2, lambda v: None if 1 <= v <= 64 else "between 1 and 64", "jobs weight this node declares on chain (processing role)"),
        "gateway_jobs_per_minute": Field((int, float), 120.0, _positive, "job submissions per tenant per minute"),
        "gateway_tenants": Field(list, [], doc="tenant public keys (64 hex) allowed on this gateway; empty: open registration"),
        "storage_replicas": Field(int, 2, lambda v: None if 1 <= v <= 16 else "between 1 and 16", "storage nodes that must hold each dataset"),
        "storage_quota_bytes": Field(int, 1024**3, _positive, "bytes each tenant may store on this node"),
        "max_blob_bytes": Field(int, 256 * 1024**2, lambda v: None if 1024 <= v <= 16 * 1024**3 else "between 1024 and 17179869184"),
        "http_listen": Field(str, "", doc='HTTP gateway "HOST:PORT" (gateway role; e.g. "127.0.0.1:8080"); empty: off'),
        "http_allow_remote": Field(bool, False, doc="let http_listen name a non-loopback host (put TLS in front of it)"),
        "http_max_body_bytes": Field(int, 256 * 1024**2, lambda v: None if 1024 <= v <= 16 * 1024**3 else "between 1024 and 17179869184",
                                     "largest dataset upload over HTTP"),
    },
    "metrics": {
        "listen": Field(str, "", doc='Prometheus metrics "HOST:PORT" (e.g. "127.0.0.1:9101"); empty: off, since a fixed default port would collide between nodes on one machine'),
    },
    "cage": {
        "service_policy": Field(str, "auto", doc='policy confining the daemon itself: "auto" (processing if the node has that role, else gateway), a policy name, or "none"'),
        "policies_file": Field(str, "", doc="cage policy file; empty means the shipped config/policies.toml"),
    },
    "debug": {
        "enable_debug_rpc": Field(bool, False, doc="expose debug_* RPC methods (tests only)"),
    },
}
REQUIRED = {("node", "identity_key"), ("node", "data_dir")}


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
    raw: dict[str, dict[str, Any]] = field(default_factory=dict)

    def section(self, name: str) -> dict[str, Any]:
        return self.raw[name]


def _type_name(t: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", list: "a list", bool: "true or false"}
    if isinstance(t, tuple):
        return "a number" if set(t) == {int, float} else " or ".join(names.get(x, x.__name__) for x in t)
    return names.get(t, t.__name__)


def _type_ok(value: Any, expected: type | tuple[type, ...]) -> bool:
    allowed = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool) and bool not in allowed:  # TOML true is not a number
        return False
    return isinstance(value, allowed)


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:120]


def parse_config(doc: dict[str, Any], path: Path) -> NodeConfig:
    """Validate a parsed TOML document against :data:`SCHEMA`."""
    where = str(path)
    values: dict[str, dict[str, Any]] = {}
    for section, content in doc.items():
        if section not in SCHEMA:
            raise ConfigError(f"{where}: unknown section [{section}]; expected one of {sorted(SCHEMA)}")
        if not isinstance(content, dict):
            raise ConfigError(f"{where}: [{section}] must be a table")
        for key in content:
            if key not in SCHEMA[section]:
                raise ConfigError(f"{where}: [{section}] unknown key {key!r}; expected one of {sorted(SCHEMA[section])}")
    for section, fields in SCHEMA.items():
        content = doc.get(section, {})
        out = values.setdefault(section, {})
        for key, spec in fields.items():
            if key not in content:
                if (section, key) in REQUIRED:
                    raise ConfigError(f"{where}: [{section}] {key} is required ({spec.doc})")
                out[key] = spec.default
                continue
            value = content[key]
            if not _type_ok(value, spec.type):
                raise ConfigError(f"{where}: [{section}] {key}: expected {_type_name(spec.type)}, got {_describe(value)}")
            if spec.check is not None:
                problem = spec.check(value)
                if problem:
                    raise ConfigError(f"{where}: [{section}] {key}: expected {problem}")
            out[key] = value
    base = path.parent
    node = values["node"]
    net = values["network"]
    if net["keepalive_timeout"] < 0.1 or net["keepalive_interval"] < 0.1:
        raise ConfigError(f"{where}: [network] keepalive_interval and keepalive_timeout must be at least 0.1 s")
    listen = values["metrics"]["listen"]
    if listen and not _host_port(listen):
        raise ConfigError(f'{where}: [metrics] listen: expected "HOST:PORT" such as "127.0.0.1:9101", got {listen!r}')
    http = values["services"]["http_listen"]
    if http and not _host_port(http):
        raise ConfigError(f'{where}: [services] http_listen: expected "HOST:PORT" such as "127.0.0.1:8080", got {http!r}')
    if http and not values["services"]["http_allow_remote"] and not _loopback(http.rsplit(":", 1)[0]):
        raise ConfigError(f"{where}: [services] http_listen: {http!r} is not a loopback address; the HTTP gateway has no TLS, "
                          "so bind it to 127.0.0.1 (or set http_allow_remote = true behind a TLS proxy)")
    for i, tenant in enumerate(values["services"]["gateway_tenants"]):
        if not isinstance(tenant, str) or len(tenant) != 64 or any(c not in "0123456789abcdef" for c in tenant):
            raise ConfigError(f"{where}: [services] gateway_tenants[{i}]: expected a public key of 64 lowercase hex characters, got {tenant!r}")
    if net["redial_backoff_cap"] < net["redial_backoff_base"]:
        raise ConfigError(f"{where}: [network] redial_backoff_cap: expected at least redial_backoff_base")
    return NodeConfig(
        path=path,
        identity_key=(base / node["identity_key"]).resolve(),
        data_dir=(base / node["data_dir"]).resolve(),
        roles=list(node["roles"]),
        moniker=node["moniker"],
        network=net,
        limits=values["limits"],
        log=values["log"],
        services=values["services"],
        metrics=values["metrics"],
        consensus={**values["consensus"], "genesis": (base / values["consensus"]["genesis"]).resolve() if values["consensus"]["genesis"] else None},
        cage={**values["cage"], "policies_file": (base / values["cage"]["policies_file"]).resolve() if values["cage"]["policies_file"] else None},
        debug=values["debug"],
        raw=values,
    )


def load_config(path: str | Path) -> NodeConfig:
    """Read and validate a node config file; also checks the key file is usable."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    config = parse_config(doc, path)
    from node.base.keys import Identity, KeyFileError

    try:
        Identity.load(config.identity_key)
    except KeyFileError as exc:
        raise ConfigError(f"{path}: [node] identity_key: {exc}") from None
    if "validator" in config.roles and config.consensus["genesis"] is None:
        raise ConfigError(f"{path}: [consensus] genesis is required for a node with the validator role")
    return config
