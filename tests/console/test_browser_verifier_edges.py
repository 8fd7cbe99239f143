"""The in-browser bundle verifier at the edges of what it reads: a genesis
that is not a canonical genesis value is a usage error (and a valid one of
another chain is another chain), and receipt bodies at the edges of
node/receipts/schema.py are accepted and refused exactly as
node.receipts.verify.BundleVerifier does, in a real headless Chromium."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "receipts"))  # the receipts tests' shared builders

from changing_chain import VALIDATORS  # noqa: E402
from receipt_samples import VALID_FIELDS  # noqa: E402
from verifier_browser import browser_outcomes, python_outcome  # noqa: E402
from verifier_bundles import GENESIS, digest, kinds_bundle  # noqa: E402

from node.base import codec  # noqa: E402
from node.base.keys import Identity  # noqa: E402
from node.consensus.genesis import Genesis  # noqa: E402
from node.receipts.devchain import DevChain  # noqa: E402
from node.receipts.envelope import RECEIPT_SIGN_TAG, Receipt, receipt_id  # noqa: E402
from node.receipts.verify import BundleVerifier  # noqa: E402

# The browser takes a core: these tests run in the "processes" xdist group (tests/conftest.py), which
# finds browser tests by the Playwright call in their text; here that call is in verifier_browser.py.
pytestmark = pytest.mark.xdist_group("processes")


def test_a_genesis_that_is_not_a_canonical_genesis_value_is_a_usage_error(verifier_page: Any, kinds_chain: DevChain) -> None:
    data = kinds_bundle(kinds_chain, 0)
    value = GENESIS.to_value()
    bad = {
        "not CBOR": b"\xff",
        "a validator left out of order": codec.encode({**value, "validators": list(reversed(value["validators"]))}),
        "a rule at its default": codec.encode({**value, "rules": {"max_attempts": 3}}),
        "the default admission spelled out": codec.encode({**value, "admission": {"nodes": "open", "tenants": "open",
                                                                                  "admitted_nodes": [], "admitted_tenants": []}}),
        "a bad chain id": codec.encode({**value, "chain_id": "Not A Chain"}),
        "an unknown key": codec.encode({**value, "extra": 1}),
        "the block interval equal to the period": codec.encode({**value, "min_block_interval_ms": value["block_period_ms"]}),
        "an empty cluster name": codec.encode({**value, "cluster": {"name": ""}}),
        "a rule out of range": codec.encode({**value, "rules": {"ack_blocks": 2_000_000}}),
        "attest_once out of range": codec.encode({**value, "rules": {"attest_once": 2}}),
        "attest_once as a CBOR boolean": codec.encode({**value, "rules": {"attest_once": True}}),
    }
    # Valid genesis values of other chains (every optional key the canonical value may carry): they
    # parse, and the bundle is refused as another chain's.
    others = [replace(GENESIS, rules={"ack_blocks": 6, "max_services": 4, "min_service_interval": 10}),
              replace(GENESIS, rules={"ack_blocks": 6, "attest_once": 1}),  # a new chain's rules (NEW_CHAIN_RULES)
              replace(GENESIS, min_block_interval_ms=GENESIS.block_period_ms // 4),
              replace(GENESIS, cluster_name="Hôpitaux réunis")]
    results = verifier_page.evaluate(
        """async ([bundleHex, genesisHexes]) => {
          const { verifyBundle } = await import("/verify/bundle.js");
          const { fromHex } = await import("/verify/cbor.js");
          return Promise.all(genesisHexes.map(async (g) => {
            const r = await verifyBundle(fromHex(bundleHex), fromHex(g));
            return [r.ok, r.part ?? null, r.exitCode ?? 0, r.genesisHash ?? null];
          }));
        }""",
        [data.hex(), [codec.encode(value).hex(), codec.encode(_with_rule(GENESIS).to_value()).hex(),
                      *(codec.encode(g.to_value()).hex() for g in others), *(b.hex() for b in bad.values())]],
    )
    assert results[0] == [True, None, 0, GENESIS.hash.hex()]
    assert results[1][:3] == [False, "chain", 14]  # a genesis with another rule: another hash, another chain
    for other, result in zip(others, results[2:2 + len(others)], strict=True):
        assert result[:3] == [False, "chain", 14], (other, result)
    hashes = verifier_page.evaluate(
        """async (genesisHexes) => {
          const { parseGenesis } = await import("/verify/genesis.js");
          const { fromHex, toHex } = await import("/verify/cbor.js");
          return Promise.all(genesisHexes.map(async (g) => toHex((await parseGenesis(fromHex(g))).hash)));
        }""", [codec.encode(g.to_value()).hex() for g in others])
    assert hashes == [g.hash.hex() for g in others]  # the browser's genesis hash is Python's
    rest = results[2 + len(others):]
    assert all(r == [False, "genesis", 2, None] for r in rest), dict(zip(bad, rest, strict=True))


def _with_rule(genesis: Genesis) -> Genesis:
    return replace(genesis, rules={"max_attempts": 5})


def _hand_signed(identity: Identity | None, body: dict[str, Any], signature: bytes | None = None) -> Receipt:
    """An envelope signed without build_receipt's checks (which would refuse most of these bodies)."""
    body_bytes = codec.encode(body)
    sig = signature if signature is not None else identity.sign(RECEIPT_SIGN_TAG, body_bytes)  # type: ignore[union-attr]
    envelope = codec.encode({"sig": sig, "body": body_bytes})
    return Receipt(envelope, receipt_id(envelope), body, body_bytes, sig)


def test_receipt_schema_edges_agree(verifier_page: Any) -> None:
    """Bodies at the edges of node/receipts/schema.py, signed and sealed for real:
    the browser accepts and refuses exactly the ones Python does (including
    Python's quirks: base58 strips trailing Python whitespace; lengths are code points)."""
    issuer = Identity.from_label("browser-verifier-edge-issuer")
    common = {"version": 1, "issuer": {"node": issuer.peer_id, "key": issuer.public_key}, "height": 1,
              "subject": digest("job"), "prev": None}
    schedule = {**common, "kind": "job.schedule", **VALID_FIELDS["job.schedule"][1]}
    store = {**common, "kind": "data.store", **VALID_FIELDS["data.store"][1]}
    verdict = {**common, "kind": "job.verdict", **VALID_FIELDS["job.verdict"][1]}
    peer = VALID_FIELDS["job.schedule"][1]["assignees"][0]
    bodies = {
        "assignee with a trailing NEL (Python strips it)": {**schedule, "assignees": [peer + "\x85"]},
        "assignee with a trailing BOM (not whitespace)": {**schedule, "assignees": [peer + "\ufeff"]},
        "assignee of 65 characters": {**schedule, "assignees": [peer + " " * 13]},
        "assignee with trailing spaces, 64 characters": {**schedule, "assignees": [peer + " " * 12]},
        "the same assignee twice": {**schedule, "assignees": [peer, peer]},
        "skipped_rows 1": {**store, "skipped_rows": 1},
        "skipped_rows 0": {**store, "skipped_rows": 0},
        "skipped_rows null": {**store, "skipped_rows": None},
        "size 2**53 + 1": {**store, "size": 2**53 + 1},
        "size 2**63": {**store, "size": 2**63},
        "height 2**63 - 1": {**store, "height": 2**63 - 1},
        "replicas true": {**store, "replicas": True},
        "an extra field": {**store, "extra": 1},
        "version true": {**store, "version": True},
        "disputed with equal results": {**verdict, "verdict": "disputed"},
        "issuer node of another key": {**store, "issuer": {"node": peer, "key": issuer.public_key}},
        "api.call code 2**31": {**common, "kind": "api.call", **VALID_FIELDS["api.call"][1], "code": 2**31},
        "api.call method with a capital": {**common, "kind": "api.call", **VALID_FIELDS["api.call"][1], "method": "analytics_Submit"},
    }
    receipts = [_hand_signed(issuer, body) for body in bodies.values()]
    # The identity point as issuer key and R, S = 0: valid under RFC 8032 cofactorless checks in BoringSSL, not in libsodium.
    identity_key = bytes([1]) + bytes(31)
    forged_issuer = {**store, "issuer": {"node": _peer_id(identity_key), "key": identity_key}}
    receipts.append(_hand_signed(None, forged_issuer, signature=identity_key + bytes(32)))
    names = [*bodies, "signed by the identity point"]
    dev = DevChain(GENESIS, list(VALIDATORS), duckdb.connect())
    dev.add_block(receipts)
    bundles = [kinds_bundle(dev, i) for i in range(len(receipts))]
    verifier = BundleVerifier(GENESIS)
    results = browser_outcomes(verifier_page, GENESIS, bundles)
    outcomes = {}
    for name, data, result in zip(names, bundles, results, strict=True):
        expected = python_outcome(verifier, data)
        assert tuple(result[:3]) == expected, f"{name}: browser {result}, python {expected}"
        outcomes[name] = expected[0]
    assert outcomes["assignee with a trailing NEL (Python strips it)"] and outcomes["size 2**53 + 1"]
    assert not outcomes["signed by the identity point"] and not outcomes["skipped_rows 0"]


def _peer_id(public_key: bytes) -> str:
    from node.base.keys import peer_id_from_public_key

    return peer_id_from_public_key(public_key)
