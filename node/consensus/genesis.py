"""The genesis file: the chain's identity, validator set and consensus limits.

A genesis file is TOML::

    chain_id = "metanode-local"          # 1-64 of [a-z0-9._-]
    genesis_time_ms = 1767225600000      # unix time in milliseconds
    block_period_ms = 1000               # the empty-block heartbeat: at most this long without a block
    min_block_interval_ms = 1000         # optional (default: block_period_ms): least gap between block timestamps
    round_timeout_base_ms = 4000         # round r times out after base * 2**r ...
    round_timeout_cap_ms = 60000         # ... but never more than this
    validators = ["<64 hex chars: Ed25519 public key>", ...]

    [limits]
    max_block_bytes = 4194304
    max_txs_per_block = 10000
    max_timestamp_drift_ms = 5000        # how far ahead of a validator's clock

    [admission]                          # optional: left out, everything is open
    nodes = "open"                       # open | allow-list | by-vote (processing, storage, gateway roles)
    tenants = "open"                     # open | allow-list | by-vote (job.submit, dataset.register)
    admitted_nodes = []                  # 64-hex public keys admitted from the start
    admitted_tenants = []

    [rules]                              # optional: each left-out rule takes its default (:data:`RULES`)
    max_attempts = 3                     # the job state machine's and scheduler's rules (node/app/rules.py)

    [cluster]                            # optional: the planning documents' cluster configuration
    name = "metaanalytics"               # the consortium's display name ("" when left out)
    consensus_algorithm = "ibft"         # the only one: metanode runs IBFT 2.0
    [scheduler]
    algorithm = "consensus_driven"       # the only one: placement is a pure function of committed state
    enable_zk_verification = false       # true is refused (no zk proofs: re-execution on r nodes)
    [service_mesh]
    enable_receipt_auditing = true       # false is refused: every operation leaves a receipt
    enable_bls_signatures = false        # true is refused (Ed25519 seals and receipts, no BLS)

Every key is required (except ``min_block_interval_ms``, the ``[admission]`` and ``[rules]`` tables and the rules in
it) and unknown keys are
refused (:data:`GENESIS_FILE`, node/base/schema.py), so a typo is an error and not a silently different chain. The
genesis hash is
``hash_value("metanode/genesis/v1", genesis.to_value())`` over the canonical
CBOR form (validators sorted), so two files that differ only in layout,
comments or validator order name the same chain. The ``admission`` map is in
that form (and so in the hash) only when it is not the default (both
policies open, no keys), so genesis files written before it existed keep
their hash. Votes change the admitted sets later (node/app/governance.py).
The ``[cluster]``, ``[scheduler]`` and ``[service_mesh]`` tables are the
planning documents' cluster configuration: every option but the cluster name
has one value metanode implements (the others are refused with why), so only
a non-empty ``cluster`` name is in the hashed form (``"cluster": {"name": ...}``)
and every genesis written before these tables existed keeps its hash.
``min_block_interval_ms`` is in the hashed form only when it differs from
``block_period_ms`` (its default), so every genesis written before it
existed keeps its hash and its timing. Likewise ``rules`` holds only the rules whose value is not the default, and
is left out when there are none: a genesis keeps its hash when a later
version adds a rule, and every genesis written before rules existed keeps
its hash. docs/genesis.md specifies all of this byte by byte.

The rules' names, defaults and ranges live here, below the application
layer that gives them meaning (``ChainRules.from_genesis`` in
node/app/rules.py builds the state machine's rules from a genesis), so the
genesis can validate them without importing upwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from node.base.codec import hash_value
from node.base.errors import ConfigError
from node.base.schema import OPTIONAL, REQUIRED, Array, Invalid, Key, Schema, Table, expected, parse_toml, read_toml
from node.consensus.validators import ValidatorSet

GENESIS_TAG = "metanode/genesis/v1"
CHAIN_ID_PATTERN = r"[a-z0-9][a-z0-9._-]{0,63}"
MAX_VALIDATORS = 256
_HEX64 = r"[0-9a-f]{64}"
ADMISSION_POLICIES = ("open", "allow-list", "by-vote")  # node/app/policy.py says what each means
MAX_ADMITTED = 4096  # keys one admission list of the genesis may name
CLUSTER_NAME_PATTERN = r"[^\x00-\x1f\x7f]{0,64}"
# The planning documents' cluster options: (table, key) -> (the value metanode implements, why no other can be set).
CLUSTER_OPTIONS: dict[tuple[str, str], tuple[Any, str]] = {
    ("cluster", "consensus_algorithm"): (
        "ibft", "metanode runs IBFT 2.0 only (node/consensus/ibft.py); there is no other consensus to choose"),
    ("scheduler", "algorithm"): (
        "consensus_driven", "metanode's ENC scheduler is consensus-driven only: every node places jobs by the "
        "same rendezvous hashing over committed chain state, so every node can check every placement"),
    ("scheduler", "enable_zk_verification"): (
        False, "metanode has no zero-knowledge proofs; it verifies results by re-executing each job on r nodes, "
        "with recorded witnesses and signed receipts that agree on the result digest"),
    ("service_mesh", "enable_receipt_auditing"): (
        True, "receipt auditing cannot be turned off: every operation (job, dataset, vote) leaves a signed "
        "receipt on chain, which audit and bundles read"),
    ("service_mesh", "enable_bls_signatures"): (
        False, "metanode signs commit seals and receipts with Ed25519, one signature per validator, "
        "with no BLS aggregation"),
}

# key -> (minimum, maximum) for the integer settings
_TOP_INTS = {
    "genesis_time_ms": (0, 2**53),
    "block_period_ms": (0, 3_600_000),
    "round_timeout_base_ms": (1, 3_600_000),
    "round_timeout_cap_ms": (1, 86_400_000),
}
_LIMIT_INTS = {
    "max_block_bytes": (1024, 256 * 1024 * 1024),
    "max_txs_per_block": (1, 1_000_000),
    "max_timestamp_drift_ms": (0, 3_600_000),
}


class Rule(NamedTuple):
    """One chain rule: its value when the genesis does not set it, and the values it may take."""

    default: int
    low: int
    high: int
    meaning: str


REPLICATION_LIMIT = 8  # the payload schema's bound on a job's r; the max_replication rule may only lower it
# The largest transaction (node/consensus/tx.py MAX_TX_BYTES): an SQL text longer than that never fits in one.
_TX_BYTES = 64 * 1024

# Every field of node/app/rules.py's ChainRules, in its order. The upper bounds keep
# each rule where the code that applies it stays cheap: max_capacity sizes the
# scheduler's exact integer comparisons (64 * 2 * max_capacity bits), the
# deadlines and the exclusion are block counts any chain reaches in days.
RULES: dict[str, Rule] = {
    "max_replication": Rule(REPLICATION_LIMIT, 1, REPLICATION_LIMIT, "the largest replication r a job may ask for"),
    "max_attempts": Rule(3, 1, 100, "assignment rounds per job, the first one included"),
    "min_deadline_blocks": Rule(2, 1, 1_000_000, "the shortest deadline a job may ask for, in blocks"),
    "max_deadline_blocks": Rule(10_000, 1, 1_000_000, "the longest deadline a job may ask for, in blocks"),
    "exclusion_blocks": Rule(20, 1, 1_000_000, "blocks a node that missed a deadline gets no new job"),
    "max_capacity": Rule(64, 1, 1024, "declared processing slots of one node (its rendezvous weight)"),
    "max_inputs": Rule(16, 1, 256, "datasets one job reads"),
    "max_query_bytes": Rule(16 * 1024, 1, _TX_BYTES, "bytes of an sql job's SQL text (UTF-8)"),
    "max_batch_receipts": Rule(64, 1, 1024, "receipt envelopes in one receipts.batch transaction"),
    "max_services": Rule(16, 1, 1024, "active services one tenant may run at once"),
    "min_service_interval": Rule(5, 1, 100_000, "the shortest every_blocks trigger a service may ask for, in blocks"),
    # 0 by default: a chain whose genesis predates the rule keeps its hash and its behaviour.
    "ack_blocks": Rule(0, 0, 1_000_000, "blocks an assignee has to acknowledge (job.ack) an assignment "
                                        "before it is missed and replaced (0: no acknowledgement required)"),
    # A boolean (0 or 1), 0 by default for the same reason: on a chain started before it every scheduler node
    # signed every decision, and its receipt log (sealed in its headers) holds all those receipts.
    "attest_once": Rule(0, 0, 1, "1: one attestation per scheduler decision (a receipts.batch with a job.schedule, "
                                 "job.verdict or service.placement receipt that attests no open decision is refused "
                                 "and left out of the receipt log); 0: every such receipt is kept"),
}


def rules_inconsistency(values: Mapping[str, int]) -> tuple[str, str] | None:
    """The first rule that contradicts another, as (its name, what it must be),
    or None. Each rule is in its own range already; this is what ranges cannot say."""
    shortest, longest = values["min_deadline_blocks"], values["max_deadline_blocks"]
    if shortest > longest:
        return "min_deadline_blocks", f"at most max_deadline_blocks ({longest})"
    return None


class GenesisRules(Mapping[str, int]):
    """The chain rules a genesis sets: every rule of :data:`RULES`, read-only
    (a genesis is immutable: its hash is cached)."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, int] | None = None) -> None:
        given = dict(values or {})
        self._values = {name: given.pop(name, rule.default) for name, rule in RULES.items()}
        self._values.update(given)  # unknown names stay, for the genesis's validation to name them

    def __getitem__(self, name: str) -> int:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __hash__(self) -> int:
        return hash(tuple(self._values.items()))

    def __repr__(self) -> str:
        return f"GenesisRules({self.changed()!r})"

    def changed(self) -> dict[str, int]:
        """The rules whose value is not the default (what the genesis hash covers)."""
        return {name: value for name, value in self._values.items()
                if name not in RULES or value != RULES[name].default}


@dataclass(frozen=True)
class Limits:
    """Bounds every validator enforces on a proposed block."""

    max_block_bytes: int = 4 * 1024 * 1024
    max_txs_per_block: int = 10_000
    max_timestamp_drift_ms: int = 5_000


@dataclass(frozen=True)
class Admission:
    """Who may join: the admission policy of nodes and tenants, and the keys the genesis admits."""

    nodes: str = "open"
    tenants: str = "open"
    admitted_nodes: tuple[bytes, ...] = ()
    admitted_tenants: tuple[bytes, ...] = ()

    @property
    def is_default(self) -> bool:
        return self == Admission()

    def to_value(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "tenants": self.tenants,
            "admitted_nodes": sorted(self.admitted_nodes),
            "admitted_tenants": sorted(self.admitted_tenants),
        }


@dataclass(frozen=True)
class Genesis:
    """A parsed, validated genesis file."""

    chain_id: str
    genesis_time_ms: int
    validators: tuple[bytes, ...]
    block_period_ms: int = 1_000
    round_timeout_base_ms: int = 4_000
    round_timeout_cap_ms: int = 60_000
    limits: Limits = field(default_factory=Limits)
    admission: Admission = field(default_factory=Admission)
    rules: Mapping[str, int] = field(default_factory=GenesisRules)
    cluster_name: str = ""  # [cluster] name: the consortium's display name
    # The least gap between block timestamps; None (and a value equal to
    # block_period_ms, which is normalised to None) means block_period_ms.
    # Read it as :attr:`min_interval_ms`.
    min_block_interval_ms: int | None = None

    def __post_init__(self) -> None:
        # Programmatic construction gets the same checks as a file.
        if not isinstance(self.rules, Mapping):
            raise ConfigError(f"<genesis>: [rules]: expected a table of rule = integer, got {type(self.rules).__name__}")
        if not isinstance(self.rules, GenesisRules):
            object.__setattr__(self, "rules", GenesisRules(self.rules))
        _validate(self.to_document(), "<genesis>")
        object.__setattr__(self, "validators", tuple(sorted(self.validators)))
        object.__setattr__(self, "admission", Admission(
            self.admission.nodes, self.admission.tenants,
            tuple(sorted(self.admission.admitted_nodes)), tuple(sorted(self.admission.admitted_tenants)),
        ))
        if self.min_block_interval_ms == self.block_period_ms:
            # One canonical form: equal to the period is the default (left out of the hash).
            object.__setattr__(self, "min_block_interval_ms", None)

    @property
    def min_interval_ms(self) -> int:
        """The least gap between block timestamps (``min_block_interval_ms``, default ``block_period_ms``)."""
        return self.block_period_ms if self.min_block_interval_ms is None else self.min_block_interval_ms

    @property
    def validator_set(self) -> ValidatorSet:
        cached = self.__dict__.get("_vset")
        if cached is None:
            cached = ValidatorSet(self.validators)
            object.__setattr__(self, "_vset", cached)
        return cached

    @property
    def hash(self) -> bytes:
        """The chain's identity: the hash of the canonical CBOR form."""
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = hash_value(GENESIS_TAG, self.to_value())
            object.__setattr__(self, "_hash", cached)
        return cached

    def round_timeout_ms(self, round_number: int) -> int:
        """``min(base * 2**round, cap)`` without building huge integers."""
        if round_number >= 40:
            return self.round_timeout_cap_ms
        return min(self.round_timeout_base_ms << round_number, self.round_timeout_cap_ms)

    def to_value(self) -> dict[str, Any]:
        """The canonical CBOR-able form the genesis hash is taken over
        (``admission`` only when it is not the default)."""
        value: dict[str, Any] = {
            "chain_id": self.chain_id,
            "genesis_time_ms": self.genesis_time_ms,
            "block_period_ms": self.block_period_ms,
            "round_timeout_base_ms": self.round_timeout_base_ms,
            "round_timeout_cap_ms": self.round_timeout_cap_ms,
            "validators": sorted(self.validators),
            "limits": {
                "max_block_bytes": self.limits.max_block_bytes,
                "max_txs_per_block": self.limits.max_txs_per_block,
                "max_timestamp_drift_ms": self.limits.max_timestamp_drift_ms,
            },
        }
        if not self.admission.is_default:
            value["admission"] = self.admission.to_value()
        changed = self.changed_rules()
        if changed:
            value["rules"] = changed
        if self.cluster_name:
            value["cluster"] = {"name": self.cluster_name}
        if self.min_block_interval_ms is not None and self.min_block_interval_ms != self.block_period_ms:
            value["min_block_interval_ms"] = self.min_block_interval_ms
        return value

    def full_value(self) -> dict[str, Any]:
        """:meth:`to_value` with the optional tables spelled out (the admission and
        every rule, defaults too). Not hashed: the chain handshake
        (node/p2p/chain_hello.py) summarizes it, so a mismatch names values
        ("rules.max_attempts 5 != 3") rather than absences."""
        value = self.to_value()
        value["admission"] = self.admission.to_value()
        value["rules"] = dict(self.rules)
        return value

    def changed_rules(self) -> dict[str, int]:
        """The rules this genesis sets to other than their default (the ``rules`` map of its hash)."""
        return GenesisRules(self.rules).changed()

    def to_document(self) -> dict[str, Any]:
        """The TOML document form (validators as hex)."""
        value = self.to_value()
        value["validators"] = [
            k.hex() if isinstance(k, (bytes, bytearray)) else k for k in self.validators
        ]
        admission = self.admission.to_value()
        for name in ("admitted_nodes", "admitted_tenants"):
            admission[name] = [k.hex() if isinstance(k, (bytes, bytearray)) else k for k in admission[name]]
        value["admission"] = admission
        value["rules"] = dict(self.rules)
        value["cluster"] = {"name": self.cluster_name}
        return value

    def to_toml(self) -> str:
        """Render as a genesis file that :func:`parse_genesis` reads back."""
        lines = ["# metanode genesis file: every validator must hold the same bytes-for-bytes values."]
        lines.append(f'chain_id = "{self.chain_id}"')
        for key in _TOP_INTS:
            lines.append(f"{key} = {getattr(self, key)}")
            if key == "block_period_ms" and self.min_block_interval_ms is not None:
                lines.append(f"min_block_interval_ms = {self.min_block_interval_ms}")
        lines.append("validators = [")
        lines.extend(f'  "{key.hex()}",' for key in sorted(self.validators))
        lines.append("]")
        lines.append("")
        lines.append("[limits]")
        for key in _LIMIT_INTS:
            lines.append(f"{key} = {getattr(self.limits, key)}")
        if not self.admission.is_default:
            lines.append("")
            lines.append("[admission]")
            lines.append(f'nodes = "{self.admission.nodes}"')
            lines.append(f'tenants = "{self.admission.tenants}"')
            for name in ("admitted_nodes", "admitted_tenants"):
                lines.append(f"{name} = [")
                lines.extend(f'  "{key.hex()}",' for key in sorted(getattr(self.admission, name)))
                lines.append("]")
        changed = self.changed_rules()
        if changed:
            lines.append("")
            lines.append("[rules]  # the rules left out take their defaults (docs/genesis.md)")
            lines.extend(f"{name} = {value}" for name, value in changed.items())
        if self.cluster_name:
            lines.append("")
            lines.append("[cluster]")
            lines.append(f"name = {_toml_string(self.cluster_name)}")
        return "\n".join(lines) + "\n"

    def write(self, path: str | Path) -> None:
        """Write the TOML form; refuses to overwrite an existing file."""
        path = Path(path)
        try:
            with path.open("x", encoding="utf-8") as handle:
                handle.write(self.to_toml())
        except FileExistsError:
            raise ConfigError(f"{path}: already exists; refusing to overwrite a genesis file") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot write genesis file: {exc.strerror}") from None


def _round_timeout_cap_not_below_base(values: dict[str, Any]) -> None:
    base, cap = values["round_timeout_base_ms"], values["round_timeout_cap_ms"]
    if cap < base:
        raise Invalid(("round_timeout_cap_ms",), expected(f"at least round_timeout_base_ms ({base})", cap))


def _min_interval_not_above_period(values: dict[str, Any]) -> None:
    interval, period = values.get("min_block_interval_ms"), values["block_period_ms"]
    if interval is not None and interval > period:
        raise Invalid(("min_block_interval_ms",), expected(
            f"at most block_period_ms ({period}): the period is the longest a chain goes without a block, "
            "the interval the shortest", interval))


def _admission_lists_match_policies(values: dict[str, Any]) -> None:
    admission = values["admission"]
    for policy, listed in (("nodes", "admitted_nodes"), ("tenants", "admitted_tenants")):
        if admission[policy] == "open" and admission[listed]:
            raise Invalid(("admission", listed), f"must be empty when admission.{policy} is \"open\" "
                          f"(everyone is admitted); got {len(admission[listed])} key(s)")
        if admission[policy] == "allow-list" and not admission[listed]:
            raise Invalid(("admission", listed), f"must name at least one public key when admission.{policy} "
                          "is \"allow-list\" (use \"by-vote\" to start with nobody admitted)")


def _rules_consistent(values: dict[str, Any]) -> None:
    problem = rules_inconsistency(values["rules"])
    if problem is not None:
        name, must_be = problem
        raise Invalid(("rules", name), expected(must_be, values["rules"][name]))


def _cluster_options_supported(values: dict[str, Any]) -> None:
    """The planning documents' options metanode does not implement are refused
    with why and what it does instead, never silently ignored."""
    for (table, key), (supported, why) in CLUSTER_OPTIONS.items():
        value = values[table][key]
        if value != supported:
            shown = str(value).lower() if isinstance(value, bool) else repr(value)
            wanted = str(supported).lower() if isinstance(supported, bool) else f'"{supported}"'
            raise Invalid((table, key), f"{shown} is not supported: {why} (set {wanted} or leave it out)")


def _toml_string(text: str) -> str:
    """``text`` as a TOML basic string."""
    import json

    return json.dumps(text, ensure_ascii=False)


def _admitted_keys() -> Array:
    return Array(Key(str, pattern=_HEX64, expect="64 lowercase hex characters (an Ed25519 public key)"),
                 default=[], max_items=MAX_ADMITTED, unique=True, noun="public key")


GENESIS_FILE = Schema(
    Table({
        "chain_id": Key(str, pattern=CHAIN_ID_PATTERN, expect="1-64 characters of [a-z0-9._-] starting with a letter or digit"),
        **{key: Key(int, ge=low, le=high) for key, (low, high) in _TOP_INTS.items()},
        "min_block_interval_ms": Key(int, OPTIONAL, "least gap between block timestamps (default: block_period_ms)",
                                     ge=0, le=_TOP_INTS["block_period_ms"][1]),
        "validators": Array(Key(str, pattern=_HEX64, expect="64 lowercase hex characters (an Ed25519 public key)"),
                            min_items=1, max_items=MAX_VALIDATORS, unique=True, noun="public key"),
        "limits": Table({key: Key(int, ge=low, le=high) for key, (low, high) in _LIMIT_INTS.items()}, default=REQUIRED),
        "admission": Table({
            "nodes": Key(str, "open", choices=ADMISSION_POLICIES),
            "tenants": Key(str, "open", choices=ADMISSION_POLICIES),
            "admitted_nodes": _admitted_keys(),
            "admitted_tenants": _admitted_keys(),
        }),
        "rules": Table({name: Key(int, rule.default, rule.meaning, ge=rule.low, le=rule.high)
                        for name, rule in RULES.items()}),
        "cluster": Table({
            "name": Key(str, "", "the consortium's display name", pattern=CLUSTER_NAME_PATTERN,
                        expect="at most 64 printable characters"),
            "consensus_algorithm": Key(str, "ibft", 'only "ibft" (IBFT 2.0)'),
        }),
        "scheduler": Table({
            "algorithm": Key(str, "consensus_driven", 'only "consensus_driven"'),
            "enable_zk_verification": Key(bool, False, "only false: results are verified by re-execution"),
        }),
        "service_mesh": Table({
            "enable_receipt_auditing": Key(bool, True, "only true: every operation leaves a receipt"),
            "enable_bls_signatures": Key(bool, False, "only false: Ed25519 seals and receipts"),
        }),
    }),
    checks=[_round_timeout_cap_not_below_base, _min_interval_not_above_period, _admission_lists_match_policies, _rules_consistent,
            _cluster_options_supported],
)


def _validate(doc: Any, source: str) -> dict[str, Any]:
    """Check a genesis document; return its typed fields. Raises ConfigError."""
    values = GENESIS_FILE.validate(doc, source)
    values["limits"] = Limits(**values["limits"])
    admission = values["admission"]
    values["admission"] = Admission(
        admission["nodes"], admission["tenants"],
        tuple(sorted(bytes.fromhex(key) for key in admission["admitted_nodes"])),
        tuple(sorted(bytes.fromhex(key) for key in admission["admitted_tenants"])),
    )
    values["validators"] = tuple(sorted(bytes.fromhex(key) for key in values["validators"]))
    values["rules"] = GenesisRules(values["rules"])
    values["cluster_name"] = values.pop("cluster")["name"]
    del values["scheduler"], values["service_mesh"]  # each has one accepted value (checked above)
    return values


def parse_genesis(text: str, source: str = "<genesis>") -> Genesis:
    """Parse and validate genesis TOML text; ``source`` names it in errors."""
    fields = _validate(parse_toml(text, source), source)
    return Genesis(**fields)


def load_genesis(path: str | Path) -> Genesis:
    """Read and validate a genesis file, raising ConfigError naming the file,
    the key and what was expected."""
    return Genesis(**_validate(read_toml(path, "genesis file"), str(path)))
