"""DockLock policies: what a caged job or service may do, read from TOML.

A policy file holds ``[policies.<name>]`` tables. Every key is checked:
an unknown key, a value of the wrong type, or a contradiction (network
allowed while sockets are denied, a ``maximum`` policy without
deterministic execution, ...) is refused with a message naming the file,
the policy and the key. Whether *this host* can enforce a policy is a
separate question answered by :func:`missing_layers` against the probed
:class:`~node.cage.layers.HostCapabilities`.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from node.base.codec import hash_value
from node.base.errors import ConfigError

LEVELS = ("permissive", "strict", "maximum")
NETWORK = ("denied", "allowed")
RNG_SOURCES = ("deterministic", "none")
CLOCK_SOURCES = ("logical", "host")

# The layers the cage knows, in the order they are applied.
LAYER_RLIMITS = "rlimits"
LAYER_NAMESPACES = "user+net namespace"
LAYER_LANDLOCK = "landlock"
LAYER_SECCOMP = "seccomp"
ALL_LAYERS = (LAYER_RLIMITS, LAYER_NAMESPACES, LAYER_LANDLOCK, LAYER_SECCOMP)

# What the planning documents demand of a `maximum` (processing) policy.
MAXIMUM_DENY = ("socket", "random", "fork")
MAXIMUM_BLOCKED = ("exec",)  # denied or killed, either is fine

MIN_MEMORY_MB = 256  # Python + DuckDB already map ~120 MB before a job starts

POLICY_DIGEST_TAG = "metanode/cage/policy/v1"


@dataclass(frozen=True)
class Limits:
    """Resource limits of one job (seconds, megabytes, counts)."""

    cpu_seconds: int = 30
    memory_mb: int = 1024
    output_mb: int = 64
    open_files: int = 64
    wall_clock_seconds: int = 60


@dataclass(frozen=True)
class Filesystem:
    """Filesystem rules: inputs read-only, one writable output directory."""

    read_only_inputs: bool = True
    writable_output_dir: bool = True


@dataclass(frozen=True)
class Policy:
    """One named, validated policy. Build with :func:`parse_policy`."""

    name: str
    enforcement_level: str = "strict"
    enable_witness_recording: bool = True
    deterministic_execution: bool = False
    network: str = "denied"
    rng_seed_source: str = "deterministic"
    clock_source: str = "logical"
    deny: tuple[str, ...] = ()
    kill: tuple[str, ...] = ()
    filesystem: Filesystem = field(default_factory=Filesystem)
    limits: Limits = field(default_factory=Limits)

    def to_value(self) -> dict[str, Any]:
        """The policy as a CBOR-able value (recorded in every witness)."""
        value = asdict(self)
        value["deny"] = list(self.deny)
        value["kill"] = list(self.kill)
        return value

    @property
    def digest(self) -> bytes:
        """Domain-tagged hash of the policy's canonical encoding."""
        return hash_value(POLICY_DIGEST_TAG, self.to_value())

    @property
    def allows_network(self) -> bool:
        return self.network == "allowed"


_TOP_KEYS = {
    "enforcement_level": str,
    "enable_witness_recording": bool,
    "deterministic_execution": bool,
    "network": str,
    "rng_seed_source": str,
    "clock_source": str,
    "deny": list,
    "kill": list,
    "filesystem": dict,
    "limits": dict,
}
_FS_KEYS = {"read_only_inputs": bool, "writable_output_dir": bool}
_LIMIT_KEYS = {name: int for name in Limits.__dataclass_fields__}
_CHOICES = {
    "enforcement_level": LEVELS,
    "network": NETWORK,
    "rng_seed_source": RNG_SOURCES,
    "clock_source": CLOCK_SOURCES,
}


def _check_keys(where: str, table: dict[str, Any], schema: dict[str, type]) -> None:
    for key, value in table.items():
        expected = schema.get(key)
        if expected is None:
            known = ", ".join(sorted(schema))
            raise ConfigError(f"{where}: unknown key {key!r} (known keys: {known})")
        # bool is an int subclass: an int field must not accept true/false.
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(
                f"{where}.{key}: expected {expected.__name__}, got {type(value).__name__}"
            )


def parse_policy(name: str, table: dict[str, Any], *, source: str = "<policy>") -> Policy:
    """Validate one ``[policies.<name>]`` table into a :class:`Policy`.

    Raises ConfigError naming ``source``, the policy and the offending key."""
    from node.cage.syscalls import validate_rule_names  # local: keeps policy light

    where = f"{source}: policies.{name}"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    _check_keys(where, table, _TOP_KEYS)
    for key, choices in _CHOICES.items():
        if key in table and table[key] not in choices:
            raise ConfigError(
                f"{where}.{key}: {table[key]!r} is not one of {', '.join(choices)}"
            )
    fs_table = table.get("filesystem", {})
    _check_keys(f"{where}.filesystem", fs_table, _FS_KEYS)
    limit_table = table.get("limits", {})
    _check_keys(f"{where}.limits", limit_table, _LIMIT_KEYS)
    for key, value in limit_table.items():
        if value <= 0:
            raise ConfigError(f"{where}.limits.{key}: must be positive, got {value}")
    lists: dict[str, tuple[str, ...]] = {}
    for key in ("deny", "kill"):
        items = table.get(key, [])
        if not all(isinstance(item, str) for item in items):
            raise ConfigError(f"{where}.{key}: every entry must be a string")
        if len(set(items)) != len(items):
            raise ConfigError(f"{where}.{key}: lists an entry twice")
        try:
            validate_rule_names(items)
        except ValueError as exc:
            raise ConfigError(f"{where}.{key}: {exc}") from None
        lists[key] = tuple(items)
    scalars = {k: v for k, v in table.items() if k not in ("deny", "kill", "filesystem", "limits")}
    policy = Policy(
        name=name,
        **scalars,
        deny=lists["deny"],
        kill=lists["kill"],
        filesystem=Filesystem(**fs_table),
        limits=Limits(**limit_table),
    )
    contradiction = find_contradiction(policy)
    if contradiction:
        raise ConfigError(f"{where}: {contradiction}")
    return policy


def find_contradiction(policy: Policy) -> str | None:
    """The first rule of ``policy`` that contradicts another, or None."""
    both = sorted(set(policy.deny) & set(policy.kill))
    if both:
        return f"{both[0]!r} is in both deny and kill"
    blocked = set(policy.deny) | set(policy.kill)
    if policy.allows_network and "socket" in blocked:
        return "network = 'allowed' contradicts denying 'socket'"
    if policy.limits.memory_mb < MIN_MEMORY_MB:
        return (
            f"limits.memory_mb = {policy.limits.memory_mb} is below the "
            f"{MIN_MEMORY_MB} MB the worker needs to start"
        )
    if policy.deterministic_execution:
        if policy.clock_source != "logical":
            return "deterministic_execution needs clock_source = 'logical'"
        if policy.allows_network:
            return "deterministic_execution contradicts network = 'allowed'"
    if policy.enforcement_level in ("strict", "maximum") and not policy.filesystem.read_only_inputs:
        return f"enforcement_level = {policy.enforcement_level!r} needs filesystem.read_only_inputs = true"
    if policy.enforcement_level == "maximum":
        if not policy.deterministic_execution:
            return "enforcement_level = 'maximum' needs deterministic_execution = true"
        if not policy.enable_witness_recording:
            return "enforcement_level = 'maximum' needs enable_witness_recording = true"
        if policy.rng_seed_source != "deterministic":
            return "enforcement_level = 'maximum' needs rng_seed_source = 'deterministic'"
        for group in MAXIMUM_DENY:
            if group not in policy.deny:
                return f"enforcement_level = 'maximum' needs {group!r} in deny"
        for group in MAXIMUM_BLOCKED:
            if group not in blocked:
                return f"enforcement_level = 'maximum' needs {group!r} in deny or kill"
    return None


def load_policies(path: str | Path) -> dict[str, Policy]:
    """Read and validate every policy in a TOML file, keyed by name."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: policy file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read policy file: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_policies(data, source=str(path))


def parse_policies(data: dict[str, Any], *, source: str = "<policies>") -> dict[str, Policy]:
    """Validate an already-parsed policy document (``{"policies": {...}}``)."""
    unknown = sorted(set(data) - {"policies"})
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key {unknown[0]!r} (expected 'policies')")
    tables = data.get("policies")
    if not isinstance(tables, dict) or not tables:
        raise ConfigError(f"{source}: no [policies.<name>] tables")
    return {name: parse_policy(name, table, source=source) for name, table in sorted(tables.items())}


def policy_from_value(value: dict[str, Any]) -> Policy:
    """Rebuild a Policy from :meth:`Policy.to_value` (e.g. read from a witness)."""
    table = dict(value)
    name = table.pop("name", None)
    if not isinstance(name, str):
        raise ConfigError("recorded policy has no name")
    return parse_policy(name, table, source="<recorded policy>")


def default_policy_path() -> Path:
    """config/policies.toml of this checkout (the shipped policies)."""
    return Path(__file__).resolve().parents[2] / "config" / "policies.toml"


def required_layers(policy: Policy, *, for_service: bool = False) -> tuple[str, ...]:
    """The layers ``policy`` cannot run without on this host.

    ``permissive`` needs none (it records what it got); ``strict`` needs the
    layers its own rules use; ``maximum`` needs all of them. A service keeps
    its network and is already multi-purpose, so it never needs namespaces."""
    if policy.enforcement_level == "permissive":
        return ()
    if policy.enforcement_level == "maximum":
        layers = list(ALL_LAYERS)
    else:
        layers = [LAYER_RLIMITS, LAYER_LANDLOCK]
        if policy.deny or policy.kill or for_service:
            layers.append(LAYER_SECCOMP)
        if not for_service:
            layers.append(LAYER_NAMESPACES)
    if for_service and LAYER_NAMESPACES in layers:
        layers.remove(LAYER_NAMESPACES)
    return tuple(layer for layer in ALL_LAYERS if layer in layers)


def missing_layers(policy: Policy, available: set[str], *, for_service: bool = False) -> list[str]:
    """Required layers of ``policy`` that are not in ``available``."""
    return [layer for layer in required_layers(policy, for_service=for_service) if layer not in available]
