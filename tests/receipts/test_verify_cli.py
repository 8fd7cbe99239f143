"""`metanode receipt bundle --data-dir` and `metanode receipt verify`: one
line per verdict and the documented exit code of each kind of failure."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from receipt_samples import VALID_FIELDS

from node.base import codec
from node.base.db import open_node_db
from node.cli.main import main
from node.receipts.bundle import decode_bundle
from node.receipts.chain import ReceiptIssuer
from node.receipts.devchain import DevChain, dev_genesis, dev_identities

VALIDATORS = dev_identities(4)
GENESIS = dev_genesis(VALIDATORS)


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, (captured.out + captured.err).strip()


@pytest.fixture
def node_dir(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """A stopped node's data directory with two sealed blocks of receipts."""
    data_dir = tmp_path / "data"
    conn = open_node_db(data_dir)
    chain = DevChain(GENESIS, VALIDATORS, conn)
    issuer = ReceiptIssuer(dev_identities(1, "cli-test-gateway")[0])
    for height in (1, 2):
        chain.add_block([issuer.issue(kind, height=height, subject=s, fields=f)
                         for kind, (s, f) in sorted(VALID_FIELDS.items())])
    conn.close()
    genesis_path = tmp_path / "genesis.toml"
    GENESIS.write(genesis_path)
    return data_dir, genesis_path, [r.id.hex() for r in chain.receipts]


def test_bundle_from_a_data_dir_then_verify(node_dir, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir, genesis, ids = node_dir
    out = tmp_path / "r.bundle"
    code, text = _run(capsys, "receipt", "bundle", ids[6], "--data-dir", str(data_dir), "--genesis", str(genesis),
                      "--out", str(out))
    assert code == 0 and text.endswith(f"leaf 6) to {out}")
    code, text = _run(capsys, "receipt", "verify", "--bundle", str(out), "--genesis", str(genesis))
    assert code == 0 and text.startswith("valid: ") and ids[6] in text and "sealed at height 2" in text
    assert len(text.splitlines()) == 1


def test_each_failure_prints_one_line_and_its_code(node_dir, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    data_dir, genesis, ids = node_dir
    good = tmp_path / "good.bundle"
    assert _run(capsys, "receipt", "bundle", ids[0], "--data-dir", str(data_dir), "--genesis", str(genesis),
                "--out", str(good))[0] == 0
    bundle = decode_bundle(good.read_bytes())
    envelope = codec.decode(bundle.receipt)
    forged_sig = codec.encode({**envelope, "sig": bytes(64)})
    other_genesis = tmp_path / "other.toml"
    dev_genesis(VALIDATORS, chain_id="metanode-other").write(other_genesis)
    # A twin genesis (same chain id and keys, another time), and the bundle relabelled to it.
    twin = replace(GENESIS, genesis_time_ms=GENESIS.genesis_time_ms + 1)
    twin_genesis = tmp_path / "twin.toml"
    twin.write(twin_genesis)
    relabelled = replace(bundle, validator_sets=(replace(bundle.validator_sets[0], genesis=twin.hash),))
    cases = {
        "malformed": (b"\xa1" + good.read_bytes()[1:], str(genesis), 10, "invalid: bundle: "),
        "receipt": (replace(bundle, receipt=forged_sig).encode(), str(genesis), 11, "invalid: receipt: bad-signature"),
        "proof": (replace(bundle, leaf_index=1).encode(), str(genesis), 12, "invalid: proof: proof-mismatch"),
        "seals": (replace(bundle, seals=bundle.seals[:2]).encode(), str(genesis), 13, "invalid: header: "),
        "genesis": (good.read_bytes(), str(other_genesis), 14, "invalid: chain: the bundle is for genesis"),
        "twin": (good.read_bytes(), str(twin_genesis), 14, "invalid: chain: the bundle is for genesis"),
        "relabelled": (relabelled.encode(), str(twin_genesis), 14, "invalid: chain: header 1 is sealed on genesis"),
    }
    for name, (data, genesis_path, expected, prefix) in cases.items():
        path = tmp_path / f"{name}.bundle"
        path.write_bytes(data)
        code, text = _run(capsys, "receipt", "verify", "--bundle", str(path), "--genesis", genesis_path)
        assert code == expected and text.startswith(prefix) and len(text.splitlines()) == 1, (name, code, text)
    code, text = _run(capsys, "receipt", "verify", "--bundle", str(good), "--genesis", str(genesis),
                      "--issuers", "validators")
    assert code == 17 and text.startswith("invalid: issuer: ")


def test_usage_errors_exit_2(node_dir, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir, genesis, ids = node_dir
    code, text = _run(capsys, "receipt", "verify", "--bundle", str(tmp_path / "missing"), "--genesis", str(genesis))
    assert code == 2 and text.startswith("error: cannot read bundle")
    code, text = _run(capsys, "receipt", "verify", "--bundle", str(genesis), "--genesis", str(tmp_path / "none"))
    assert code == 2 and "no such genesis file" in text
    code, text = _run(capsys, "receipt", "bundle", ids[0], "--out", str(tmp_path / "x"))
    assert code == 2 and "exactly one of --node or --data-dir" in text
    code, text = _run(capsys, "receipt", "bundle", "xyz", "--data-dir", str(data_dir), "--genesis", str(genesis),
                      "--out", str(tmp_path / "x"))
    assert code == 2 and "RECEIPT_ID" in text
    code, text = _run(capsys, "receipt", "bundle", "ab" * 32, "--data-dir", str(data_dir), "--genesis",
                      str(genesis), "--out", str(tmp_path / "x"))
    assert code == 1 and "is not in the log" in text


def test_receipts_sealed_across_set_changes_bundle_from_a_data_dir_and_verify(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A stopped node whose state recorded two validator set changes (by the
    app's own record_change): its bundles carry the transitions and verify
    against the original genesis; a transition left out exits 14; the
    validators-only policy judges issuers at the sealing height."""
    from changing_chain import GENESIS as CHANGING_GENESIS
    from changing_chain import LEAVER, NEWCOMER, grow_changing_chain

    from node.app.tables import create_tables
    from node.app.validator_sets import ADD_VALIDATOR, REMOVE_VALIDATOR, record_change

    data_dir = tmp_path / "data"
    conn = open_node_db(data_dir)
    grown = grow_changing_chain(conn)
    create_tables(conn)
    keys = CHANGING_GENESIS.validator_set.keys
    assert record_change(conn, keys, 2, bytes(32), ADD_VALIDATOR, NEWCOMER.public_key) == grown.first_change
    assert record_change(conn, keys, 5, b"\x01" * 32, REMOVE_VALIDATOR, LEAVER.public_key) == grown.second_change
    conn.close()
    genesis = tmp_path / "genesis.toml"
    CHANGING_GENESIS.write(genesis)
    paths = {}
    for name, receipt in (("before", grown.before), ("between", grown.between), ("after", grown.after),
                          ("newcomer", grown.newcomer_after), ("leaver", grown.leaver_after)):
        paths[name] = tmp_path / f"{name}.bundle"
        code, text = _run(capsys, "receipt", "bundle", receipt.id.hex(), "--data-dir", str(data_dir),
                          "--genesis", str(genesis), "--out", str(paths[name]))
        assert code == 0, text
        code, text = _run(capsys, "receipt", "verify", "--bundle", str(paths[name]), "--genesis", str(genesis))
        assert code == 0 and text.startswith(f"valid: data.store receipt {receipt.id.hex()}"), text
    assert [len(decode_bundle(paths[n].read_bytes()).validator_sets) for n in ("before", "between", "after")] == [1, 2, 3]
    after = decode_bundle(paths["after"].read_bytes())
    broken = tmp_path / "broken.bundle"
    broken.write_bytes(replace(after, validator_sets=(after.validator_sets[0], after.validator_sets[2])).encode())
    code, text = _run(capsys, "receipt", "verify", "--bundle", str(broken), "--genesis", str(genesis))
    assert code == 14 and text.startswith("invalid: chain: validator_sets[1]"), text
    for name, expected in (("newcomer", 0), ("leaver", 17), ("after", 17)):
        code, text = _run(capsys, "receipt", "verify", "--bundle", str(paths[name]), "--genesis", str(genesis),
                          "--issuers", "validators")
        assert code == expected, (name, text)
