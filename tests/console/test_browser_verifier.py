"""The in-browser bundle verifier (node/console/static/verify/) in a real
headless Chromium: on every valid bundle and every tampered one (each class
of tests/receipts/test_verify.py and test_bundle_set_changes.py, and every
single-byte flip of two bundles, one with two validator set transitions and
one with a witness) it gives the same (ok, part, exit code) as
node.receipts.verify.BundleVerifier.

Its CBOR decoder and Ed25519 are checked in test_browser_cbor_ed25519.py, the
edges of the genesis and receipt schemas in test_browser_verifier_edges.py.
One browser for the module (verifier_browser.py); the bundles are
verifier_bundles.py's."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "receipts"))  # the receipts tests' shared builders

from changing_chain import SHRUNK, ChangingChain, grow_changing_chain  # noqa: E402
from verifier_browser import browser_outcomes, genesis_cbor, python_outcome  # noqa: E402
from verifier_bundles import (  # noqa: E402
    GENESIS,
    PROCESSING,
    changing_bundle,
    kinds_bundle,
    tampered_cases,
    witness_record,
)

from node.cage.witness import encode_witness_file  # noqa: E402
from node.consensus.validators import ValidatorSet  # noqa: E402
from node.receipts.bundle import Bundle, decode_bundle  # noqa: E402
from node.receipts.devchain import DevChain, dev_genesis, dev_identities  # noqa: E402
from node.receipts.verify import BundleVerifier, issuers_in, sealing_validators  # noqa: E402

# The browser takes a core: these tests run in the "processes" xdist group (tests/conftest.py), which
# finds browser tests by the Playwright call in their text; here that call is in verifier_browser.py.
pytestmark = pytest.mark.xdist_group("processes")


@pytest.fixture(scope="module")
def changing() -> ChangingChain:
    return grow_changing_chain()


_VERIFY_FLIPS = """async ([genesisHex, bundleHex, flips]) => {
  const { verifyBundle } = await import("/verify/bundle.js");
  const { fromHex } = await import("/verify/cbor.js");
  const genesis = fromHex(genesisHex);
  const bundle = fromHex(bundleHex);
  const out = [];
  for (const [offset, mask] of flips) {
    const copy = bundle.slice();
    copy[offset] ^= mask;
    const r = await verifyBundle(copy, genesis);
    out.push(r.ok ? [true, null, 0] : [false, r.part, r.exitCode]);
  }
  return out;
}"""


# -- the tests ----------------------------------------------------------------------------------
def test_valid_bundles_verify_in_the_browser_as_in_python(verifier_page: Any, kinds_chain: DevChain, changing: ChangingChain) -> None:
    bundles = [kinds_bundle(kinds_chain, i) for i in range(len(kinds_chain.receipts))]
    bundles.append(kinds_bundle(kinds_chain, 5, encode_witness_file(witness_record("ok"), {"input_paths": {}})))
    bundles += [changing_bundle(changing, r) for r in (changing.before, changing.between, changing.after, changing.newcomer_before,
                                                        changing.newcomer_after, changing.leaver_after)]
    results = browser_outcomes(verifier_page, GENESIS, bundles)
    verifier = BundleVerifier(GENESIS)
    for data, result in zip(bundles, results, strict=True):
        verified = verifier.verify(data)
        assert result[:3] == [True, None, 0], result
        assert result[3:] == [verified.receipt.id.hex(), str(verified.header.height), verified.leaf_index,
                              [k.hex() for k in verified.validators.keys], GENESIS.hash.hex()]
    # The bundle with two transitions is checked against the genesis alone, with the shrunk set last.
    assert results[-4][6] == [k.hex() for k in ValidatorSet(v.public_key for v in SHRUNK).keys]


def test_every_tamper_class_fails_in_the_browser_with_the_python_part_and_code(
    verifier_page: Any, kinds_chain: DevChain, changing: ChangingChain
) -> None:
    cases = tampered_cases(kinds_chain, changing)
    by_genesis: dict[bytes, list[str]] = {}
    for name, (genesis, _data) in cases.items():
        by_genesis.setdefault(genesis.hash, []).append(name)
    codes: set[int] = set()
    for names in by_genesis.values():
        genesis = cases[names[0]][0]
        verifier = BundleVerifier(genesis)
        results = browser_outcomes(verifier_page, genesis, [cases[name][1] for name in names])
        for name, result in zip(names, results, strict=True):
            expected = python_outcome(verifier, cases[name][1])
            assert tuple(result[:3]) == expected, f"{name}: browser {result}, python {expected}"
            codes.add(expected[2])
    assert codes >= {0, 10, 13, 14, 16}, codes


def test_issuer_policies_agree(verifier_page: Any, kinds_chain: DevChain, changing: ChangingChain) -> None:
    bundles = [changing_bundle(changing, r) for r in (changing.newcomer_after, changing.newcomer_before, changing.leaver_after, changing.after)]
    strict = BundleVerifier(GENESIS, issuer_allowed=sealing_validators)
    results = browser_outcomes(verifier_page, GENESIS, bundles, "validators")
    assert [tuple(r[:3]) for r in results] == [python_outcome(strict, b) for b in bundles]
    assert [r[2] for r in results] == [0, 17, 17, 17]
    listed = [PROCESSING.public_key]
    by_list = BundleVerifier(GENESIS, issuer_allowed=issuers_in(listed))
    both = [kinds_bundle(kinds_chain, 0), bundles[0]]
    results = browser_outcomes(verifier_page, GENESIS, both, [k.hex() for k in listed])
    assert [tuple(r[:3]) for r in results] == [python_outcome(by_list, b) for b in both] == [(True, None, 0), (False, "issuer", 17)]


@pytest.mark.parametrize("which", ["two transitions", "witness"])
def test_every_single_byte_flip_agrees_with_python(
    verifier_page: Any, kinds_chain: DevChain, changing: ChangingChain, which: str
) -> None:
    if which == "two transitions":
        data = changing_bundle(changing, changing.after)
        assert len(decode_bundle(data).validator_sets) == 3
    else:
        data = kinds_bundle(kinds_chain, 5, encode_witness_file(witness_record("ok"), {"input_paths": {}}))
    flips = [(offset, mask) for offset in range(len(data)) for mask in (0x01, 0x80, 0xFF)]
    results = verifier_page.evaluate(_VERIFY_FLIPS, [genesis_cbor(GENESIS), data.hex(), flips])
    verifier = BundleVerifier(GENESIS)
    seen: dict[int, int] = {}
    for (offset, mask), result in zip(flips, results, strict=True):
        flipped = bytearray(data)
        flipped[offset] ^= mask
        expected = python_outcome(verifier, bytes(flipped))
        assert tuple(result) == expected, f"byte {offset} ^ {mask:#x}: browser {result}, python {expected}"
        seen[expected[2]] = seen.get(expected[2], 0) + 1
    assert set(seen) >= {10, 11, 12, 13, 14}, seen


def test_bundle_objects_are_what_the_builders_return(kinds_chain: DevChain) -> None:
    """Guard for the cases above: the bundles really are version 2 bundles of the chains' genesis."""
    assert isinstance(decode_bundle(kinds_bundle(kinds_chain, 0)), Bundle)
    assert GENESIS == dev_genesis(dev_identities(4))
