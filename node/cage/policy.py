"""DockLock policies: what a caged job or service may do, read from TOML.

A policy file holds ``[policies.<name>]`` tables, declared in
:data:`POLICY_FILE` (node/base/schema.py). Every key is checked: an unknown
key, a value of the wrong type, or a contradiction (network allowed while
sockets are denied, a ``maximum`` policy without deterministic execution,
...) is refused with a message naming the file, the policy and the key. Whether *this host* can enforce a policy is a
separate question answered by :func:`missing_layers` against the probed
:class:`~node.cage.layers.HostCapabilities`.

The planning documents' own keys are accepted with their meaning:
``allow_network = true|false`` is another spelling of ``network =
"allowed"|"denied"`` (both given and disagreeing is refused), and ``syscalls
= [...]`` is a seccomp allow-list (every syscall it does not list is denied),
beside the deny and kill lists.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from node.base.codec import hash_value
from node.base.errors import ConfigError
from node.base.schema import OPTIONAL, Array, Invalid, Key, Schema, Table, TableOf, read_toml

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
    # The seccomp allow-list (groups or raw names); None: no allow-list, only deny/kill.
    syscalls: tuple[str, ...] | None = None

    def to_value(self) -> dict[str, Any]:
        """The policy as a CBOR-able value (recorded in every witness).
        ``syscalls`` is in it only when the policy has an allow-list, so
        every policy written before allow-lists existed keeps its digest."""
        value = asdict(self)
        value["deny"] = list(self.deny)
        value["kill"] = list(self.kill)
        if self.syscalls is None:
            del value["syscalls"]
        else:
            value["syscalls"] = list(self.syscalls)
        return value

    @property
    def digest(self) -> bytes:
        """Domain-tagged hash of the policy's canonical encoding."""
        return hash_value(POLICY_DIGEST_TAG, self.to_value())

    @property
    def allows_network(self) -> bool:
        return self.network == "allowed"

    def blocks(self, group: str) -> bool:
        """True if seccomp refuses ``group`` (a group or raw name) under this
        policy: it is in deny or kill, or an allow-list leaves all of it out
        (an allowed ``clone`` or ``clone3`` with no fork rule creates processes)."""
        if group in self.deny or group in self.kill:
            return True
        if self.syscalls is None:
            return False
        from node.cage.syscalls import expand  # local: keeps policy light

        allowed = set(expand(self.syscalls))
        members = set(expand([group])) | ({"clone3"} if group == "fork" else set())
        return not members & allowed


def _names(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def _rule_names_are_known(values: dict[str, Any]) -> None:
    from node.cage.syscalls import validate_rule_names  # local: keeps policy light

    for name, table in values["policies"].items():
        for key in ("deny", "kill", "syscalls"):
            try:
                validate_rule_names(table.get(key, ()), any_arch=key == "syscalls")
            except ValueError as exc:
                raise Invalid(("policies", name, key), str(exc)) from None


def _allow_network_agrees(values: dict[str, Any]) -> None:
    """``allow_network`` is the planning documents' spelling of ``network``;
    given both, they must say the same."""
    for name, table in values["policies"].items():
        if "allow_network" in table and "network" in table:
            said = "allowed" if table["allow_network"] else "denied"
            if said != table["network"]:
                raise Invalid(("policies", name, "allow_network"),
                              f"{str(table['allow_network']).lower()} disagrees with network = "
                              f"{table['network']!r}; give one of them")


def _no_contradictions(values: dict[str, Any]) -> None:
    for name, table in values["policies"].items():
        contradiction = find_contradiction(_policy(name, table))
        if contradiction:
            raise Invalid(("policies", name), contradiction)


_DEFAULT = Policy(name="")
POLICY_FILE = Schema(
    Table({
        "policies": TableOf(
            Table({
                "enforcement_level": Key(str, _DEFAULT.enforcement_level, choices=LEVELS),
                "enable_witness_recording": Key(bool, _DEFAULT.enable_witness_recording),
                "deterministic_execution": Key(bool, _DEFAULT.deterministic_execution),
                # Left out (OPTIONAL) so that a disagreeing allow_network can be told from the default.
                "network": Key(str, OPTIONAL, f"default {_DEFAULT.network!r}", choices=NETWORK),
                "allow_network": Key(bool, OPTIONAL, 'the same as network: true = "allowed", false = "denied"'),
                "rng_seed_source": Key(str, _DEFAULT.rng_seed_source, choices=RNG_SOURCES),
                "clock_source": Key(str, _DEFAULT.clock_source, choices=CLOCK_SOURCES),
                "deny": Array(Key(str), list(_DEFAULT.deny), "syscall groups or raw syscall names refused with an error",
                              unique=True, noun="entry"),
                "kill": Array(Key(str), list(_DEFAULT.kill), "syscall groups or raw syscall names that kill the job",
                              unique=True, noun="entry"),
                "syscalls": Array(Key(str), OPTIONAL, "seccomp allow-list: syscall groups or raw names; every "
                                  "syscall not listed is denied (EPERM). Left out: no allow-list",
                                  unique=True, noun="entry"),
                "filesystem": Table({name: Key(bool, getattr(_DEFAULT.filesystem, name)) for name in _names(Filesystem)}),
                "limits": Table({name: Key(int, getattr(_DEFAULT.limits, name), gt=0) for name in _names(Limits)}),
            }),
            min_tables=1,
            header="policies.<name>",
        ),
    }),
    checks=[_rule_names_are_known, _allow_network_agrees, _no_contradictions],
)


def _policy(name: str, table: dict[str, Any]) -> Policy:
    """A Policy from a validated table (every non-OPTIONAL key present)."""
    lists = ("deny", "kill", "filesystem", "limits", "syscalls", "network", "allow_network")
    scalars = {k: v for k, v in table.items() if k not in lists}
    if "network" in table:
        network = table["network"]
    elif "allow_network" in table:
        network = "allowed" if table["allow_network"] else "denied"
    else:
        network = _DEFAULT.network
    syscalls = table.get("syscalls")
    return Policy(
        name=name,
        **scalars,
        network=network,
        deny=tuple(table["deny"]),
        kill=tuple(table["kill"]),
        filesystem=Filesystem(**table["filesystem"]),
        limits=Limits(**table["limits"]),
        syscalls=None if syscalls is None else tuple(syscalls),
    )


def parse_policy(name: str, table: dict[str, Any], *, source: str = "<policy>") -> Policy:
    """Validate one ``[policies.<name>]`` table into a :class:`Policy`.

    Raises ConfigError naming ``source``, the policy and the offending key."""
    return parse_policies({"policies": {name: table}}, source=source)[name]


def find_contradiction(policy: Policy) -> str | None:
    """The first rule of ``policy`` that contradicts another, or None."""
    both = sorted(set(policy.deny) & set(policy.kill))
    if both:
        return f"{both[0]!r} is in both deny and kill"
    blocked = set(policy.deny) | set(policy.kill)
    if policy.allows_network and "socket" in blocked:
        return "network = 'allowed' contradicts denying 'socket'"
    if policy.syscalls is not None:
        from node.cage.syscalls import allow_list_conflict

        conflict = allow_list_conflict(policy.syscalls, policy.deny, policy.kill)
        if conflict:
            return f"syscalls: {conflict}"
        if policy.allows_network and policy.blocks("socket"):
            return "network = 'allowed' needs 'socket' in syscalls (the allow-list)"
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
            if not policy.blocks(group):
                return f"enforcement_level = 'maximum' needs {group!r} in deny or kill (or left out of syscalls)"
    return None


def load_policies(path: str | Path) -> dict[str, Policy]:
    """Read and validate every policy in a TOML file, keyed by name."""
    return parse_policies(read_toml(path, "policy file"), source=str(path))


def parse_policies(data: dict[str, Any], *, source: str = "<policies>") -> dict[str, Policy]:
    """Validate an already-parsed policy document (``{"policies": {...}}``)."""
    values = POLICY_FILE.validate(data, source)
    return {name: _policy(name, table) for name, table in sorted(values["policies"].items())}


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
        if policy.deny or policy.kill or policy.syscalls is not None or for_service:
            layers.append(LAYER_SECCOMP)
        if not for_service:
            layers.append(LAYER_NAMESPACES)
    if for_service and LAYER_NAMESPACES in layers:
        layers.remove(LAYER_NAMESPACES)
    return tuple(layer for layer in ALL_LAYERS if layer in layers)


def missing_layers(policy: Policy, available: set[str], *, for_service: bool = False) -> list[str]:
    """Required layers of ``policy`` that are not in ``available``."""
    return [layer for layer in required_layers(policy, for_service=for_service) if layer not in available]
