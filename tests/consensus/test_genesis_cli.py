"""`metanode genesis init/show/rules` from key files, public keys and peer ids; admission and rule options."""

from __future__ import annotations

import json

import pytest

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


def _init(tmp_path, *extra: str):
    from click.testing import CliRunner

    from node.cli.main import cli

    key = Identity.from_label("g-rules").public_key.hex()
    return CliRunner().invoke(cli, ["genesis", "init", "--chain-id", "rules-1", "--validator", key,
                                    "--out", str(tmp_path / "g.toml"), *extra])


def test_init_sets_admission_and_rules(tmp_path):
    node, tenant = Identity.from_label("g-node"), Identity.from_label("g-tenant")
    out = tmp_path / "genesis.toml"
    done = run_cli("genesis", "init", "--chain-id", "rules-1", "--validator", Identity.from_label("g0").peer_id,
                   "--nodes-admission", "allow-list", "--admit-node", node.peer_id,
                   "--tenants-admission", "by-vote", "--admit-tenant", tenant.public_key.hex(),
                   "--rule", "max_attempts=5", "--rule", " max_deadline_blocks = 50000", "--out", str(out))
    assert done.returncode == 0, done.stderr
    g = load_genesis(out)
    assert (g.admission.nodes, g.admission.admitted_nodes) == ("allow-list", (node.public_key,))
    assert (g.admission.tenants, g.admission.admitted_tenants) == ("by-vote", (tenant.public_key,))
    # ack_blocks = 6, attest_once = 1: what init writes for every new chain (their defaults, 0, are older chains').
    assert g.changed_rules() == {"max_attempts": 5, "max_deadline_blocks": 50000, "ack_blocks": 6, "attest_once": 1}
    shown = json.loads(run_cli("genesis", "show", str(out), "--json").stdout)
    assert shown["rules"]["max_attempts"] == 5 and shown["rules"]["max_inputs"] == 16
    assert shown["admission"]["admitted_nodes"] == [node.public_key.hex()]
    listed = json.loads(run_cli("genesis", "rules", "--json").stdout)
    assert listed["max_attempts"] == {"default": 3, "min": 1, "max": 100,
                                      "meaning": "assignment rounds per job, the first one included"}


@pytest.mark.parametrize("args, message", [
    (["--rule", "max_attempts"], "--rule 'max_attempts': expected NAME=VALUE"),
    (["--rule", "max_tries=5"], "--rule 'max_tries=5': unknown rule 'max_tries'; expected one of ["),
    (["--rule", "max_attempts=five"], "--rule 'max_attempts=five': expected an integer value, got 'five'"),
    (["--rule", "max_attempts=0"], "--rule 'max_attempts=0': max_attempts must be 1..100, got 0"),
    (["--rule", "max_attempts=4", "--rule", "max_attempts=5"], "--rule 'max_attempts=5': rule max_attempts is already set"),
    (["--rule", "min_deadline_blocks=20000"],
     "--rule 'min_deadline_blocks=20000': min_deadline_blocks must be at most max_deadline_blocks (10000), got 20000"),
    (["--rule", "max_deadline_blocks=1"], "--rule (default min_deadline_blocks = 2): min_deadline_blocks must be at most"),
    (["--admit-node", Identity.from_label("n").peer_id], "--admit-node: only with --nodes-admission allow-list or by-vote"),
    (["--tenants-admission", "allow-list"], "--tenants-admission allow-list: name at least one tenant with --admit-tenant"),
    (["--tenants-admission", "by-vote", "--admit-tenant", "nope"], "--admit-tenant 'nope': not a public key"),
    (["--nodes-admission", "by-vote", "--admit-node", "ab" * 32, "--admit-node", "ab" * 32],
     f"--admit-node '{'ab' * 32}': the same key is listed twice"),
    (["--nodes-admission", "closed"], "Invalid value for '--nodes-admission': 'closed' is not one of"),
])
def test_init_errors_name_the_option(tmp_path, args, message):
    from node.base.errors import UserError

    done = _init(tmp_path, *args)
    if isinstance(done.exception, UserError):  # the CLI's main prints it and exits with its code
        assert done.exception.exit_code == 2 and message in str(done.exception)
    else:
        assert done.exit_code == 2 and message in done.output, done.output
    assert not (tmp_path / "g.toml").exists()


def test_init_sets_the_least_block_interval_beside_the_heartbeat(tmp_path):
    out = tmp_path / "g.toml"
    validator = Identity.from_label("interval-0").peer_id
    done = run_cli("genesis", "init", "--chain-id", "interval-1", "--validator", validator, "--block-period-ms", "500",
                   "--min-block-interval-ms", "100", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert load_genesis(out).min_interval_ms == 100
    shown = run_cli("genesis", "show", str(out))
    assert "block period 500 ms (blocks with transactions from 100 ms)" in shown.stdout
    assert json.loads(run_cli("genesis", "show", str(out), "--json").stdout)["min_block_interval_ms"] == 100
    # Left out: the period is also the interval (a fixed tick), and the file does not carry the key.
    plain = tmp_path / "plain.toml"
    assert run_cli("genesis", "init", "--chain-id", "interval-1", "--validator", validator, "--block-period-ms", "500",
                   "--out", str(plain)).returncode == 0
    assert "min_block_interval_ms" not in plain.read_text() and load_genesis(plain).min_interval_ms == 500
    longer = run_cli("genesis", "init", "--chain-id", "interval-1", "--validator", validator, "--block-period-ms", "500",
                     "--min-block-interval-ms", "501", "--out", str(tmp_path / "bad.toml"))
    assert longer.returncode == 2 and "--min-block-interval-ms" in longer.stderr and "Traceback" not in longer.stderr
