"""Genesis file: parsing, canonical hash, and clear errors for bad input."""

from __future__ import annotations

import pytest

from node.base.errors import ConfigError
from node.consensus.genesis import load_genesis, parse_genesis


def _text(ibft, **replace) -> str:
    genesis = ibft.make_genesis(ibft.make_identities(4))
    text = genesis.to_toml()
    for old, new in replace.items():
        text = text.replace(old, new)
    return text


def test_round_trip_and_hash(ibft, tmp_path):
    genesis = ibft.make_genesis(ibft.make_identities(4))
    path = tmp_path / "genesis.toml"
    genesis.write(path)
    loaded = load_genesis(path)
    assert loaded == genesis
    assert loaded.hash == genesis.hash
    assert loaded.validator_set.n == 4 and loaded.validator_set.quorum == 3


def test_hash_ignores_layout_and_validator_order_but_not_values(ibft):
    ids = ibft.make_identities(4)
    a = ibft.make_genesis(ids)
    b = ibft.make_genesis(list(reversed(ids)))
    assert a.hash == b.hash
    assert parse_genesis("# comment\n" + a.to_toml()).hash == a.hash
    assert ibft.make_genesis(ids, block_period_ms=999).hash != a.hash
    assert ibft.make_genesis(ids, chain_id="other").hash != a.hash


def test_round_timeout_doubles_then_caps(ibft):
    genesis = ibft.make_genesis(ibft.make_identities(4), round_timeout_base_ms=1000, round_timeout_cap_ms=10_000)
    assert [genesis.round_timeout_ms(r) for r in range(6)] == [1000, 2000, 4000, 8000, 10_000, 10_000]
    assert genesis.round_timeout_ms(10**9) == 10_000  # no giant integers


@pytest.mark.parametrize(
    "edit, expected",
    [
        ({"block_period_ms = 1000": ""}, "block_period_ms is required (an integer, 0..3600000)"),
        ({"block_period_ms = 1000": 'block_period_ms = "1s"'}, "block_period_ms: expected an integer, got str '1s'"),
        ({'chain_id = "metanode-test"': 'chain_id = "Bad Chain"'}, "chain_id: expected 1-64 characters of [a-z0-9._-] starting with a letter or digit, got 'Bad Chain'"),
        ({"round_timeout_cap_ms = 16000": "round_timeout_cap_ms = 10"}, "round_timeout_cap_ms: expected at least round_timeout_base_ms"),
        ({"max_txs_per_block = 100": "max_txs_per_block = 0"}, "[limits] max_txs_per_block: expected 1..1000000, got 0"),
        ({"[limits]": "surprise = 1\n[limits]"}, "unknown key 'surprise'; expected one of ['admission', 'block_period_ms', 'chain_id',"),
        ({"validators = [": 'validators = [\n  "zz",'}, "validators[0]: expected 64 lowercase hex characters (an Ed25519 public key), got 'zz'"),
    ],
)
def test_errors_name_file_key_and_expectation(ibft, tmp_path, edit, expected):
    path = tmp_path / "g.toml"
    path.write_text(_text(ibft, **edit))
    with pytest.raises(ConfigError) as err:
        load_genesis(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)
    assert err.value.exit_code == 2


def test_duplicate_validator_and_missing_file_and_bad_toml(ibft, tmp_path):
    text = _text(ibft)
    first = text.split('"')[3]  # first validator key
    dup = text.replace("validators = [", f'validators = [\n  "{first}",')
    with pytest.raises(ConfigError, match="distinct public keys"):
        parse_genesis(dup, "dup.toml")
    with pytest.raises(ConfigError, match="no such genesis file"):
        load_genesis(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_genesis("chain_id = ", "broken.toml")


def test_write_refuses_to_overwrite(ibft, tmp_path):
    genesis = ibft.make_genesis(ibft.make_identities(4))
    path = tmp_path / "genesis.toml"
    genesis.write(path)
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        genesis.write(path)


def test_admission_policies_round_trip_and_enter_the_hash_only_when_not_open(ibft, tmp_path):
    from dataclasses import replace

    from node.app.policy import Governance
    from node.consensus.genesis import Admission

    ids = ibft.make_identities(4)
    base = ibft.make_genesis(ids)
    assert "admission" not in base.to_value() and "[admission]" not in base.to_toml()
    explicit = parse_genesis(base.to_toml() + '\n[admission]\nnodes = "open"\ntenants = "open"\n')
    assert explicit.hash == base.hash  # the default, written out, is the same chain
    key = ids[0].public_key
    closed = replace(base, admission=Admission("by-vote", "allow-list", (), (key,)))
    assert closed.hash != base.hash
    assert closed.to_value()["admission"] == {
        "nodes": "by-vote", "tenants": "allow-list", "admitted_nodes": [], "admitted_tenants": [key]}
    path = tmp_path / "genesis.toml"
    closed.write(path)
    loaded = load_genesis(path)
    assert loaded == closed and loaded.hash == closed.hash
    gov = Governance.from_genesis(loaded)
    assert gov.node_policy == "by-vote" and gov.genesis_tenants == {key} and gov.validators == loaded.validators


@pytest.mark.parametrize("table, expected", [
    ('nodes = "closed"', "[admission] nodes: expected one of ['open', 'allow-list', 'by-vote'], got 'closed'"),
    ('tenants = "allow-list"', "[admission] admitted_tenants: must name at least one public key"),
    (f'admitted_nodes = ["{"ab" * 32}"]', '[admission] admitted_nodes: must be empty when admission.nodes is "open"'),
    ('nodes = "by-vote"\nadmitted_nodes = ["xyz"]', "[admission] admitted_nodes[0]"),
    ("quorum = 3", "[admission] unknown key 'quorum'"),
])
def test_admission_errors_name_the_key(ibft, table, expected):
    text = _text(ibft) + "\n[admission]\n" + table + "\n"
    with pytest.raises(ConfigError) as info:
        parse_genesis(text, "g.toml")
    assert expected in str(info.value)
