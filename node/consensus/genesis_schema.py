"""The genesis file's schema: its keys, their ranges, and the checks across keys.

:data:`GENESIS_FILE` (node/base/schema.py) refuses unknown keys and says,
for each bad value, the file, the key and what was expected; its checks say
what per-key ranges cannot (a cap below its base, an allow-list with nobody
on it, a cluster option metanode does not implement). node/consensus/genesis.py
turns the checked values into a :class:`~node.consensus.genesis.Genesis`.
"""

from __future__ import annotations

from typing import Any

from node.base.schema import OPTIONAL, REQUIRED, Array, Invalid, Key, Schema, Table, expected
from node.consensus.genesis_rules import RULES, rules_inconsistency

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

# key -> (minimum, maximum) for the integer settings (top level, then [limits]);
# genesis.py's to_toml writes them in this order.
TOP_INTS = {
    "genesis_time_ms": (0, 2**53),
    "block_period_ms": (0, 3_600_000),
    "round_timeout_base_ms": (1, 3_600_000),
    "round_timeout_cap_ms": (1, 86_400_000),
}
LIMIT_INTS = {
    "max_block_bytes": (1024, 256 * 1024 * 1024),
    "max_txs_per_block": (1, 1_000_000),
    "max_timestamp_drift_ms": (0, 3_600_000),
}


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


def _admitted_keys() -> Array:
    return Array(Key(str, pattern=_HEX64, expect="64 lowercase hex characters (an Ed25519 public key)"),
                 default=[], max_items=MAX_ADMITTED, unique=True, noun="public key")


GENESIS_FILE = Schema(
    Table({
        "chain_id": Key(str, pattern=CHAIN_ID_PATTERN, expect="1-64 characters of [a-z0-9._-] starting with a letter or digit"),
        **{key: Key(int, ge=low, le=high) for key, (low, high) in TOP_INTS.items()},
        "min_block_interval_ms": Key(int, OPTIONAL, "least gap between block timestamps (default: block_period_ms)",
                                     ge=0, le=TOP_INTS["block_period_ms"][1]),
        "validators": Array(Key(str, pattern=_HEX64, expect="64 lowercase hex characters (an Ed25519 public key)"),
                            min_items=1, max_items=MAX_VALIDATORS, unique=True, noun="public key"),
        "limits": Table({key: Key(int, ge=low, le=high) for key, (low, high) in LIMIT_INTS.items()}, default=REQUIRED),
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
