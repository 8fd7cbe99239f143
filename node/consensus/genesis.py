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

    [rules]                              # optional: each left-out rule takes its default (genesis_rules.RULES)
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
refused (``GENESIS_FILE`` in node/consensus/genesis_schema.py, node/base/schema.py), so a typo is an error and not a silently different chain. The
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

The rules' names, defaults and ranges are in node/consensus/genesis_rules.py,
the file's keys, ranges and cross-key checks in node/consensus/genesis_schema.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.base.codec import hash_value
from node.base.errors import ConfigError
from node.base.schema import parse_toml, read_toml
from node.consensus.genesis_rules import GenesisRules
from node.consensus.genesis_schema import GENESIS_FILE, LIMIT_INTS, TOP_INTS
from node.consensus.validators import ValidatorSet

GENESIS_TAG = "metanode/genesis/v1"


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
        for key in TOP_INTS:
            lines.append(f"{key} = {getattr(self, key)}")
            if key == "block_period_ms" and self.min_block_interval_ms is not None:
                lines.append(f"min_block_interval_ms = {self.min_block_interval_ms}")
        lines.append("validators = [")
        lines.extend(f'  "{key.hex()}",' for key in sorted(self.validators))
        lines.append("]")
        lines.append("")
        lines.append("[limits]")
        for key in LIMIT_INTS:
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


def _toml_string(text: str) -> str:
    """``text`` as a TOML basic string."""
    import json

    return json.dumps(text, ensure_ascii=False)


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
