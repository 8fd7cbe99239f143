"""The chain rule attest_once in the genesis: an integer 0 or 1, 0 (absent) keeps every older
genesis's hash and meaning, new chains (genesis init, the testnet) write 1."""

from __future__ import annotations

import pytest

from node.app.rules import NEW_CHAIN_RULES, ChainRules
from node.base import codec
from node.base.errors import ConfigError
from node.consensus.genesis import load_genesis, parse_genesis
from node.consensus.genesis_rules import RULES
from node.testnet import layout
from tests.consensus.test_genesis_rules import DOCS_HASH, docs_genesis

# docs/genesis.md: the example genesis with a new chain's rules (ack_blocks = 6, attest_once = 1).
NEW_CHAIN_HASH = "e535e4e00ee7e539ffaffc11f082c061db9ef8caab79ed39f0111b54f2acdef3"


def test_a_genesis_without_the_rule_or_with_it_off_keeps_its_hash():
    assert RULES["attest_once"][:3] == (0, 0, 1)
    plain = docs_genesis()
    assert plain.rules["attest_once"] == 0 and plain.hash.hex() == DOCS_HASH
    off = parse_genesis(plain.to_toml() + "\n[rules]\nattest_once = 0\n")
    assert off.hash.hex() == DOCS_HASH and "rules" not in off.to_value()
    assert ChainRules.from_genesis(plain).attest_once == 0


def test_the_rule_on_is_an_integer_in_the_hashed_rules():
    on = docs_genesis(rules={"attest_once": 1})
    assert on.to_value()["rules"] == {"attest_once": 1}
    assert bytes.fromhex("a16b6174746573745f6f6e636501") in codec.encode(on.to_value())
    assert on.hash.hex() != DOCS_HASH
    assert "attest_once = 1" in on.to_toml() and parse_genesis(on.to_toml()) == on
    new_chain = docs_genesis(rules=NEW_CHAIN_RULES)
    value = codec.encode(new_chain.to_value())
    assert bytes.fromhex("a26a61636b5f626c6f636b73066b6174746573745f6f6e636501") in value
    assert (len(value), new_chain.hash.hex()) == (372, NEW_CHAIN_HASH)
    assert ChainRules.from_genesis(new_chain).attest_once == 1


@pytest.mark.parametrize("line, expected", [
    ("attest_once = true", "[rules] attest_once: expected an integer, got bool"),
    ("attest_once = 2", "[rules] attest_once: expected 0..1, got 2"),
    ("attest_once = -1", "[rules] attest_once: expected 0..1, got -1"),
])
def test_a_bad_value_is_refused_naming_the_rule(tmp_path, line, expected):
    path = tmp_path / "g.toml"
    path.write_text(docs_genesis().to_toml() + "\n[rules]\n" + line + "\n")
    with pytest.raises(ConfigError) as err:
        load_genesis(path)
    assert str(err.value).startswith(f"{path}: ") and expected in str(err.value), str(err.value)


def test_new_chains_set_it():
    assert NEW_CHAIN_RULES["attest_once"] == 1
    genesis = layout.testnet_genesis(layout.plan_testnet(2, seed="attest-once"))
    assert genesis.changed_rules()["attest_once"] == 1
    with pytest.raises(ValueError, match="attest_once"):
        ChainRules(attest_once=2)
    with pytest.raises(ValueError, match="attest_once"):
        ChainRules(attest_once=True)  # a bool is not the rule's integer
