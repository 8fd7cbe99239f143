"""The genesis [rules] table: every chain rule, optional, ranged, in the hash only when not the default;
a node runs the rules of its genesis."""

from __future__ import annotations

import dataclasses
import time

import pytest
import trio

from node.app.rules import DEFAULT_RULES, ChainRules
from node.base.errors import ConfigError
from node.base.keys import Identity
from node.consensus.genesis import Genesis, load_genesis, parse_genesis
from node.consensus.genesis_rules import RULES, GenesisRules
from node.consensus.tx import MAX_TX_BYTES, sign_tx
from node.p2p.client import connect_to_node
from tests.support import running_daemon, write_node_config

# docs/blocks.md's example genesis and its pinned hash (tests/architecture/test_docs_examples.py derives it too).
DOCS_HASH = "8a083a5e17640e66f8ee9f2c8692cec3f6eb5257e4475769d2166ca10cb725ad"


def docs_genesis(**changes) -> Genesis:
    keys = tuple(Identity.from_label(f"docs/validator-{i}").public_key for i in range(4))
    return Genesis(chain_id="docs-example", genesis_time_ms=1767225600000, validators=keys, **changes)


def test_default_rules_keep_every_genesis_hash():
    plain = docs_genesis()
    assert plain.hash.hex() == DOCS_HASH
    assert "rules" not in plain.to_value() and "[rules]" not in plain.to_toml()
    spelled_out = docs_genesis(rules={name: rule.default for name, rule in RULES.items()})
    assert spelled_out.hash.hex() == DOCS_HASH and spelled_out == plain
    table = "\n[rules]\n" + "".join(f"{name} = {rule.default}\n" for name, rule in RULES.items())
    assert parse_genesis(plain.to_toml() + table).hash.hex() == DOCS_HASH


def test_a_changed_rule_enters_the_hash_alone_and_round_trips(tmp_path):
    changed = docs_genesis(rules={"max_attempts": 5, "exclusion_blocks": 40})
    assert changed.hash != docs_genesis().hash
    assert changed.to_value()["rules"] == {"max_attempts": 5, "exclusion_blocks": 40}  # only what differs
    assert docs_genesis(rules={"max_attempts": 6}).hash != changed.hash
    assert changed.rules["max_attempts"] == 5 and changed.rules["max_inputs"] == RULES["max_inputs"].default
    assert len(changed.rules) == len(RULES)
    path = tmp_path / "genesis.toml"
    changed.write(path)
    assert "[rules]" in path.read_text() and "max_inputs" not in path.read_text()
    loaded = load_genesis(path)
    assert loaded == changed and loaded.hash == changed.hash and hash(loaded) == hash(changed)
    full = loaded.full_value()
    assert full["rules"] == dict(loaded.rules) and full["admission"]["nodes"] == "open"


def test_chain_rules_come_from_the_genesis():
    assert ChainRules.from_genesis(docs_genesis()) == DEFAULT_RULES
    rules = ChainRules.from_genesis(docs_genesis(rules={"max_replication": 2, "max_deadline_blocks": 50}))
    assert rules == dataclasses.replace(DEFAULT_RULES, max_replication=2, max_deadline_blocks=50)
    assert rules.digest() != DEFAULT_RULES.digest()


def test_rules_and_chain_rules_declare_the_same_rules_with_unchanged_defaults():
    assert [f.name for f in dataclasses.fields(ChainRules)] == list(RULES)
    assert all(getattr(DEFAULT_RULES, name) == rule.default for name, rule in RULES.items())
    # The state's rules digest is stored with its tables: the defaults must not move (a new
    # rule moves it, with a schema version that rebuilds the state: ack_blocks, schema 9; attest_once).
    assert DEFAULT_RULES.digest().hex() == "c3466def3aa576e5c0547f7048ea644b7bb2c549afbad718b90c5df0bb955bde"
    assert RULES["max_query_bytes"].high == MAX_TX_BYTES
    for name, rule in RULES.items():
        assert rule.low <= rule.default <= rule.high
        if name != "min_deadline_blocks":  # its top is above the default max_deadline_blocks
            assert getattr(ChainRules(**{name: rule.high}), name) == rule.high
        with pytest.raises(ValueError, match=name):
            ChainRules(**{name: rule.high + 1})


@pytest.mark.parametrize("table, expected", [
    ("max_attempts = 0", "[rules] max_attempts: expected 1..100, got 0"),
    ("max_replication = 9", "[rules] max_replication: expected 1..8, got 9"),
    ('max_attempts = "5"', "[rules] max_attempts: expected an integer, got str '5'"),
    ("max_attempts = 2.5", "[rules] max_attempts: expected an integer, got float 2.5"),
    ("max_attempt = 5", "[rules] unknown key 'max_attempt'; expected one of ['ack_blocks', 'attest_once', 'exclusion_blocks', 'max_attempts',"),
    ("min_deadline_blocks = 5\nmax_deadline_blocks = 4",
     "[rules] min_deadline_blocks: expected at most max_deadline_blocks (4), got 5"),
    # The inconsistency may come from a default the file leaves out.
    ("min_deadline_blocks = 20000", "[rules] min_deadline_blocks: expected at most max_deadline_blocks (10000), got 20000"),
])
def test_rule_errors_name_file_and_key(tmp_path, table, expected):
    path = tmp_path / "g.toml"
    path.write_text(docs_genesis().to_toml() + "\n[rules]\n" + table + "\n")
    with pytest.raises(ConfigError) as err:
        load_genesis(path)
    assert str(err.value).startswith(f"{path}: ") and expected in str(err.value)
    assert err.value.exit_code == 2


def test_programmatic_rules_get_the_same_checks():
    with pytest.raises(ConfigError, match=r"\[rules\] unknown key 'bogus'"):
        docs_genesis(rules={"bogus": 1})
    with pytest.raises(ConfigError, match=r"\[rules\] max_inputs: expected 1..256, got 0"):
        docs_genesis(rules={"max_inputs": 0})
    with pytest.raises(ConfigError, match=r"\[rules\]: expected a table"):
        docs_genesis(rules=[("max_inputs", 3)])
    assert GenesisRules({"max_inputs": 3}) == {**{n: r.default for n, r in RULES.items()}, "max_inputs": 3}


async def test_a_node_applies_its_genesis_rules(node_dir):
    """A validator on a genesis with max_capacity = 2 refuses a node.register declaring 3 (the default allows 64)."""
    identity = Identity.from_label("test-node-v")
    genesis = Genesis(chain_id="rules-test", genesis_time_ms=time.time_ns() // 1_000_000 - 1000,
                      validators=(identity.public_key,), block_period_ms=100, round_timeout_base_ms=1000,
                      round_timeout_cap_ms=4000, rules={"max_capacity": 2})
    path = node_dir / "genesis.toml"
    genesis.write(path)
    cfg = write_node_config(node_dir, "v", roles=["validator"], genesis=path)
    worker = Identity.from_label("rules-worker")

    def register(capacity: int, nonce: int) -> str:
        payload = {"roles": ["processing"], "capacity": capacity, "moniker": "w"}
        return sign_tx(worker, chain_id="rules-test", nonce=nonce, tx_type="node.register", payload=payload).encoded.hex()

    async with running_daemon(cfg) as daemon:
        assert daemon.app.rules == ChainRules(max_capacity=2)
        async with connect_to_node(daemon.listen_addrs()[0]) as rpc:
            # The mempool's hook takes what a rule vote could allow (up to 1024); the
            # state refuses, with its reason, what breaks the rule in force at the block.
            with trio.fail_after(20):
                refused = await rpc.call("tx_submit", {"tx": register(3, 0), "mode": "commit", "timeout": 15})
            assert refused["state_rejected"] == "invalid payload: capacity: must be in 1..2, got 3"
            with trio.fail_after(20):
                done = await rpc.call("tx_submit", {"tx": register(2, 1), "mode": "commit", "timeout": 15})
            assert done["status"] == "committed" and "state_rejected" not in done
