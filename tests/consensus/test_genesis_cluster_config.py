"""The planning documents' cluster configuration ([cluster], [scheduler],
[service_mesh]): consortium-wide, so it lives in the genesis file; the options
metanode implements are accepted with their meaning, the others refused with
why, and a node config naming them is told where they belong."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.base.config import parse_config
from node.base.errors import ConfigError
from node.consensus.genesis import parse_genesis

BASE = f"""chain_id = "c"
genesis_time_ms = 0
block_period_ms = 1000
round_timeout_base_ms = 4000
round_timeout_cap_ms = 60000
validators = ["{'ab' * 32}"]

[limits]
max_block_bytes = 4194304
max_txs_per_block = 10000
max_timestamp_drift_ms = 5000
"""
# Phase 3 of the planning document, exactly as written.
SEED = """
[cluster]
name = "metaanalytics"
consensus_algorithm = "ibft"

[scheduler]
algorithm = "consensus_driven"
enable_zk_verification = true

[service_mesh]
enable_bls_signatures = true
enable_receipt_auditing = true
"""
SUPPORTED = SEED.replace("enable_zk_verification = true", "enable_zk_verification = false").replace(
    "enable_bls_signatures = true", "enable_bls_signatures = false")
# The hash of BASE before these tables existed: an old genesis names the same chain.
BASE_HASH = "7ef14eddca877754dddd2347d3c91354064cf4a8a54912f158dca557586f87a9"


def refusal(extra: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_genesis(BASE + extra, "genesis.toml")
    return str(info.value)


def test_the_seed_cluster_configuration_is_refused_only_for_its_two_unsupported_flags():
    assert refusal(SEED) == (
        "genesis.toml: [scheduler] enable_zk_verification: true is not supported: metanode has no zero-knowledge "
        "proofs; it verifies results by re-executing each job on r nodes, with recorded witnesses and signed "
        "receipts that agree on the result digest (set false or leave it out)")
    assert refusal(SEED.replace("enable_zk_verification = true", "enable_zk_verification = false")) == (
        "genesis.toml: [service_mesh] enable_bls_signatures: true is not supported: metanode signs commit seals "
        "and receipts with Ed25519, one signature per validator, with no BLS aggregation (set false or leave it out)")
    genesis = parse_genesis(BASE + SUPPORTED, "genesis.toml")
    assert genesis.cluster_name == "metaanalytics"


@pytest.mark.parametrize(("extra", "message"), [
    ('[cluster]\nconsensus_algorithm = "raft"\n',
     "genesis.toml: [cluster] consensus_algorithm: 'raft' is not supported: metanode runs IBFT 2.0 only "
     '(node/consensus/ibft.py); there is no other consensus to choose (set "ibft" or leave it out)'),
    ('[scheduler]\nalgorithm = "round_robin"\n',
     "genesis.toml: [scheduler] algorithm: 'round_robin' is not supported: metanode's ENC scheduler is "
     "consensus-driven only: every node places jobs by the same rendezvous hashing over committed chain state, "
     'so every node can check every placement (set "consensus_driven" or leave it out)'),
    ("[service_mesh]\nenable_receipt_auditing = false\n",
     "genesis.toml: [service_mesh] enable_receipt_auditing: false is not supported: receipt auditing cannot be "
     "turned off: every operation (job, dataset, vote) leaves a signed receipt on chain, which audit and bundles "
     "read (set true or leave it out)"),
    ("[cluster]\nname = 7\n", "genesis.toml: [cluster] name: expected a string, got int 7"),
    ('[cluster]\nname = "a\\u0007b"\n',
     "genesis.toml: [cluster] name: expected at most 64 printable characters, got 'a\\x07b'"),
    ("[cluster]\nregion = 1\n",
     "genesis.toml: [cluster] unknown key 'region'; expected one of ['consensus_algorithm', 'name']"),
    ("[scheduler]\nenable_zk_verification = 1\n",
     "genesis.toml: [scheduler] enable_zk_verification: expected true or false, got int 1"),
])
def test_unsupported_and_malformed_options_are_refused_with_why(extra: str, message: str):
    assert refusal(extra) == message


@pytest.mark.parametrize("extra", [
    "",
    '[cluster]\nname = ""\nconsensus_algorithm = "ibft"\n',
    '[scheduler]\nalgorithm = "consensus_driven"\nenable_zk_verification = false\n',
    "[service_mesh]\nenable_receipt_auditing = true\nenable_bls_signatures = false\n",
])
def test_the_default_cluster_configuration_keeps_the_genesis_hash(extra: str):
    assert parse_genesis(BASE + extra).hash.hex() == BASE_HASH


def test_a_cluster_name_is_part_of_the_chain_identity_and_round_trips():
    named = parse_genesis(BASE + SUPPORTED)
    assert named.to_value()["cluster"] == {"name": "metaanalytics"}
    assert named.hash.hex() != BASE_HASH
    assert parse_genesis(named.to_toml()).hash == named.hash
    assert parse_genesis(named.to_toml()).cluster_name == "metaanalytics"
    other = parse_genesis(BASE + SUPPORTED.replace("metaanalytics", "other-consortium"))
    assert other.hash != named.hash


@pytest.mark.parametrize("section", ["cluster", "scheduler", "service_mesh"])
def test_a_node_config_naming_a_consortium_section_is_told_where_it_belongs(section: str):
    doc = {"node": {"identity_key": "k", "data_dir": "d"}, section: {}}
    with pytest.raises(ConfigError) as info:
        parse_config(doc, Path("node.toml"))
    assert str(info.value) == (
        f"node.toml: [{section}] is consortium-wide, not a node setting: put it in the genesis file "
        "([consensus] genesis), where every node reads the same value (docs/config.md)")


def test_unknown_node_config_sections_stay_refused():
    with pytest.raises(ConfigError, match=r"unknown section \[clusters\]"):
        parse_config({"node": {"identity_key": "k", "data_dir": "d"}, "clusters": {}}, Path("node.toml"))
