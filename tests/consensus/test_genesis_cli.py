"""`metanode genesis init/show` from key files, public keys and peer ids."""

from __future__ import annotations

import json

from node.base.keys import Identity
from node.consensus.genesis import load_genesis
from tests.support import run_cli


def test_init_and_show(tmp_path):
    a, b, c = (Identity.from_label(f"g{i}") for i in range(3))
    a.write(tmp_path / "a.key")
    out = tmp_path / "genesis.toml"
    done = run_cli("genesis", "init", "--chain-id", "test-1", "--validator", str(tmp_path / "a.key"),
                   "--validator", b.public_key.hex(), "--validator", c.peer_id, "--block-period-ms", "250", "--out", str(out))
    assert done.returncode == 0, done.stderr
    g = load_genesis(out)
    assert set(g.validators) == {a.public_key, b.public_key, c.public_key} and g.block_period_ms == 250
    shown = json.loads(run_cli("genesis", "show", str(out), "--json").stdout)
    assert shown["hash"] == g.hash.hex() and shown["quorum"] == 2
    again = run_cli("genesis", "init", "--chain-id", "test-1", "--validator", c.peer_id, "--out", str(out))
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr


def test_bad_validator_and_duplicates_are_usage_errors(tmp_path):
    k = Identity.from_label("dup").public_key.hex()
    dup = run_cli("genesis", "init", "--chain-id", "x", "--validator", k, "--validator", k, "--out", str(tmp_path / "g.toml"))
    assert dup.returncode == 2 and "twice" in dup.stderr
    bad = run_cli("genesis", "init", "--chain-id", "x", "--validator", "nope", "--out", str(tmp_path / "g.toml"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    bad_chain = run_cli("genesis", "init", "--chain-id", "UPPER CASE", "--validator", k, "--out", str(tmp_path / "g.toml"))
    assert bad_chain.returncode == 2 and "chain_id" in bad_chain.stderr
