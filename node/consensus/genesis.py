"""The genesis file: the chain's identity, validator set and consensus limits.

A genesis file is TOML::

    chain_id = "metanode-local"          # 1-64 of [a-z0-9._-]
    genesis_time_ms = 1767225600000      # unix time in milliseconds
    block_period_ms = 1000               # least gap between block timestamps
    round_timeout_base_ms = 4000         # round r times out after base * 2**r ...
    round_timeout_cap_ms = 60000         # ... but never more than this
    validators = ["<64 hex chars: Ed25519 public key>", ...]

    [limits]
    max_block_bytes = 4194304
    max_txs_per_block = 10000
    max_timestamp_drift_ms = 5000        # how far ahead of a validator's clock

Every key is required and unknown keys are refused, so a typo is an error and
not a silently different chain. The genesis hash is
``hash_value("metanode/genesis/v1", genesis.to_value())`` over the canonical
CBOR form (validators sorted), so two files that differ only in layout,
comments or validator order name the same chain.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.base.codec import hash_value
from node.consensus.validators import ValidatorSet
from node.base.errors import ConfigError

GENESIS_TAG = "metanode/genesis/v1"
CHAIN_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
MAX_VALIDATORS = 256
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

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


@dataclass(frozen=True)
class Limits:
    """Bounds every validator enforces on a proposed block."""

    max_block_bytes: int = 4 * 1024 * 1024
    max_txs_per_block: int = 10_000
    max_timestamp_drift_ms: int = 5_000


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

    def __post_init__(self) -> None:
        # Programmatic construction gets the same checks as a file.
        _validate(self.to_document(), "<genesis>")
        object.__setattr__(self, "validators", tuple(sorted(self.validators)))

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
        """The canonical CBOR-able form the genesis hash is taken over."""
        return {
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

    def to_document(self) -> dict[str, Any]:
        """The TOML document form (validators as hex)."""
        value = self.to_value()
        value["validators"] = [
            k.hex() if isinstance(k, (bytes, bytearray)) else k for k in self.validators
        ]
        return value

    def to_toml(self) -> str:
        """Render as a genesis file that :func:`parse_genesis` reads back."""
        lines = ["# metanode genesis file: every validator must hold the same bytes-for-bytes values."]
        lines.append(f'chain_id = "{self.chain_id}"')
        for key in _TOP_INTS:
            lines.append(f"{key} = {getattr(self, key)}")
        lines.append("validators = [")
        lines.extend(f'  "{key.hex()}",' for key in sorted(self.validators))
        lines.append("]")
        lines.append("")
        lines.append("[limits]")
        for key in _LIMIT_INTS:
            lines.append(f"{key} = {getattr(self.limits, key)}")
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


def _fail(source: str, key: str, expected: str) -> ConfigError:
    return ConfigError(f"{source}: key {key!r}: expected {expected}")


def _check_int(doc: dict[str, Any], key: str, bounds: tuple[int, int], source: str, prefix: str) -> int:
    name = prefix + key
    if key not in doc:
        raise _fail(source, name, f"an integer in [{bounds[0]}, {bounds[1]}] (missing)")
    value = doc[key]
    if isinstance(value, bool) or not isinstance(value, int) or not bounds[0] <= value <= bounds[1]:
        raise _fail(source, name, f"an integer in [{bounds[0]}, {bounds[1]}], got {value!r}")
    return value


def _validate(doc: Any, source: str) -> dict[str, Any]:
    """Check a genesis document; return its typed fields. Raises ConfigError."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: a genesis file is a TOML table")
    allowed = {"chain_id", "validators", "limits", *_TOP_INTS}
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; expected only {sorted(allowed)}")
    chain_id = doc.get("chain_id")
    if not isinstance(chain_id, str) or not CHAIN_ID_PATTERN.match(chain_id):
        raise _fail(source, "chain_id", f"1-64 characters of [a-z0-9._-] starting with a letter or digit, got {chain_id!r}")
    out: dict[str, Any] = {"chain_id": chain_id}
    for key, bounds in _TOP_INTS.items():
        out[key] = _check_int(doc, key, bounds, source, "")
    if out["round_timeout_cap_ms"] < out["round_timeout_base_ms"]:
        raise _fail(source, "round_timeout_cap_ms", f"at least round_timeout_base_ms ({out['round_timeout_base_ms']})")
    validators = doc.get("validators")
    if not isinstance(validators, list) or not 1 <= len(validators) <= MAX_VALIDATORS:
        raise _fail(source, "validators", f"a list of 1 to {MAX_VALIDATORS} Ed25519 public keys (64 lowercase hex characters)")
    keys: list[bytes] = []
    for i, item in enumerate(validators):
        if isinstance(item, (bytes, bytearray)) and len(item) == 32:
            keys.append(bytes(item))
            continue
        if not isinstance(item, str) or not _HEX64.match(item):
            raise _fail(source, f"validators[{i}]", f"64 lowercase hex characters (an Ed25519 public key), got {item!r}")
        keys.append(bytes.fromhex(item))
    if len(set(keys)) != len(keys):
        raise _fail(source, "validators", "distinct public keys (a key is listed twice)")
    limits = doc.get("limits")
    if not isinstance(limits, dict):
        raise _fail(source, "limits", "a table with " + ", ".join(_LIMIT_INTS))
    unknown = sorted(set(limits) - set(_LIMIT_INTS))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {['limits.' + k for k in unknown]}; expected only {sorted(_LIMIT_INTS)}")
    out["limits"] = Limits(**{k: _check_int(limits, k, b, source, "limits.") for k, b in _LIMIT_INTS.items()})
    out["validators"] = tuple(sorted(keys))
    return out


def parse_genesis(text: str, source: str = "<genesis>") -> Genesis:
    """Parse and validate genesis TOML text; ``source`` names it in errors."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    fields = _validate(doc, source)
    return Genesis(**fields)


def load_genesis(path: str | Path) -> Genesis:
    """Read and validate a genesis file, raising ConfigError naming the file,
    the key and what was expected."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such genesis file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read genesis file: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: genesis file is not UTF-8") from None
    return parse_genesis(text, str(path))
