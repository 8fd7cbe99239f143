"""Genesis file: parsing, canonical hash, and clear errors for bad input."""

from __future__ import annotations

import pytest

from node.consensus.genesis import load_genesis, parse_genesis
from node.base.errors import ConfigError


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
        ({"block_period_ms = 1000": ""}, "key 'block_period_ms'"),
        ({"block_period_ms = 1000": 'block_period_ms = "1s"'}, "key 'block_period_ms': expected an integer"),
        ({'chain_id = "metanode-test"': 'chain_id = "Bad Chain"'}, "key 'chain_id'"),
        ({"round_timeout_cap_ms = 16000": "round_timeout_cap_ms = 10"}, "key 'round_timeout_cap_ms': expected at least"),
        ({"max_txs_per_block = 100": "max_txs_per_block = 0"}, "key 'limits.max_txs_per_block'"),
        ({"[limits]": "surprise = 1\n[limits]"}, "unknown key(s) ['surprise']"),
        ({"validators = [": 'validators = [\n  "zz",'}, "key 'validators[0]': expected 64 lowercase hex"),
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
