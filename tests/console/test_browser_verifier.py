"""The in-browser bundle verifier (node/console/static/verify/) in a real
headless Chromium: on every valid bundle and every tampered one (each class
of tests/receipts/test_verify.py and test_bundle_set_changes.py, and every
single-byte flip of two bundles, one with two validator set transitions and
one with a witness) it gives the same (ok, part, exit code) as
node.receipts.verify.BundleVerifier. Its CBOR decoder accepts exactly what
codec.decode accepts, and its Ed25519 exactly what libsodium accepts.

One browser for the module; the static files are served over a local HTTP
server (ES modules and Web Crypto need an http://127.0.0.1 origin)."""

from __future__ import annotations

import hashlib
import random
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import duckdb
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "receipts"))  # the receipts tests' shared builders

from changing_chain import GENESIS as CHANGING_GENESIS  # noqa: E402
from changing_chain import GROWN, LEAVER, NEWCOMER, SHRUNK, VALIDATORS, ChangingChain, grow_changing_chain  # noqa: E402
from receipt_samples import VALID_FIELDS  # noqa: E402

from node.base import codec  # noqa: E402
from node.base.keys import Identity  # noqa: E402
from node.base.keys import verify as nacl_verify  # noqa: E402
from node.cage.witness import encode_witness_file, witness_digest  # noqa: E402
from node.consensus.block import BlockHeader  # noqa: E402
from node.consensus.genesis import Genesis  # noqa: E402
from node.consensus.validators import ValidatorSet  # noqa: E402
from node.receipts.api import build_bundle, validator_set_chain  # noqa: E402
from node.receipts.bundle import Bundle, ValidatorSetEntry, ValidatorSetTransition, decode_bundle  # noqa: E402
from node.receipts.chain import ReceiptIssuer  # noqa: E402
from node.receipts.devchain import DevChain, dev_genesis, dev_identities, seal_block  # noqa: E402
from node.receipts.envelope import RECEIPT_SIGN_TAG, Receipt, receipt_id  # noqa: E402
from node.receipts.execution import exec_fields  # noqa: E402
from node.receipts.verify import BundleInvalid, BundleVerifier, issuers_in, sealing_validators  # noqa: E402

STATIC = Path(__file__).resolve().parents[2] / "node" / "console" / "static"
CHROMIUM = Path("/usr/bin/chromium")
GENESIS = CHANGING_GENESIS  # dev_genesis(dev_identities(4)): the same genesis in both test modules
PROCESSING = dev_identities(1, "browser-verifier-processing")[0]
OUTSIDERS = dev_identities(4, "browser-verifier-outsider")

Outcome = tuple[bool, str | None, int]


# -- the browser ------------------------------------------------------------------------------
class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass

    def do_GET(self) -> None:
        if self.path == "/":
            body = b"<!doctype html><meta charset=utf-8><title>verifier test</title>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()


@pytest.fixture(scope="module")
def verifier_page() -> Iterator[Any]:
    """A Chromium page on an http://127.0.0.1 origin serving node/console/static."""
    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: install it with `apt-get install -y chromium` (expected at /usr/bin/chromium)", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is missing: install the test extras (`pip install -e .[test]`, playwright==1.65.2)", pytrace=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(STATIC)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
            yield page
            browser.close()
    finally:
        server.shutdown()
        server.server_close()


_VERIFY_MANY = """async ([genesisHex, bundlesHex, issuers]) => {
  const { verifyBundle } = await import("/verify/bundle.js");
  const { fromHex } = await import("/verify/cbor.js");
  const genesis = fromHex(genesisHex);
  const policy = Array.isArray(issuers) ? issuers.map(fromHex) : issuers;
  const out = [];
  for (const hex of bundlesHex) {
    const r = await verifyBundle(fromHex(hex), genesis, { issuers: policy });
    out.push(r.ok ? [true, null, 0, r.receiptId, String(r.height), r.leafIndex, r.validators, r.genesisHash]
                  : [false, r.part, r.exitCode, r.detail]);
  }
  return out;
}"""

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


def _genesis_cbor(genesis: Genesis) -> str:
    return codec.encode(genesis.to_value()).hex()


def _browser(page: Any, genesis: Genesis, bundles: list[bytes], issuers: Any = "any") -> list[list[Any]]:
    return page.evaluate(_VERIFY_MANY, [_genesis_cbor(genesis), [b.hex() for b in bundles], issuers])


def _python(verifier: BundleVerifier, data: bytes) -> Outcome:
    try:
        verifier.verify(data)
    except BundleInvalid as exc:
        return (False, exc.part, exc.exit_code)
    return (True, None, 0)


# -- the bundles --------------------------------------------------------------------------------
def _digest(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


def _witness_record(result: str) -> dict[str, Any]:
    return {
        "version": 1, "inputs_root": _digest("inputs"), "code": {"job": _digest("job"), "policy": _digest("p")},
        "seed": _digest("seed"), "result_digest": _digest(result), "exit": {"status": "ok", "signal": None},
    }


@pytest.fixture(scope="module")
def kinds_chain() -> DevChain:
    """Three blocks, each with a receipt of every kind, the job.exec last (leaves 5, 11, 17)."""
    dev = DevChain(GENESIS, list(VALIDATORS), duckdb.connect())
    issuer = ReceiptIssuer(PROCESSING)
    for height in range(1, 4):
        receipts = [issuer.issue(kind, height=height, subject=subject, fields=fields)
                    for kind, (subject, fields) in sorted(VALID_FIELDS.items())]
        record = _witness_record("ok")
        receipts.append(issuer.issue("job.exec", height=height, subject=_digest(f"job {height}"),
                                     fields=exec_fields(record, witness_digest(record))))
        dev.add_block(receipts)
    return dev


@pytest.fixture(scope="module")
def changing() -> ChangingChain:
    return grow_changing_chain()


def _kinds_bundle(chain: DevChain, index: int, witness_file: bytes | None = None) -> bytes:
    return build_bundle(chain.receipts[index].id, chain.log, chain.block_source(), chain.genesis, witness_file=witness_file)


def _changing_bundle(grown: ChangingChain, receipt: Any) -> bytes:
    chain = grown.chain
    return build_bundle(receipt.id, chain.log, chain.block_source(), chain.genesis, validator_history=chain.validator_history)


def _twin(genesis: Genesis) -> Genesis:
    return replace(genesis, genesis_time_ms=genesis.genesis_time_ms + 86_400_000)


def _tampered_cases(chain: DevChain, grown: ChangingChain) -> dict[str, tuple[Genesis, bytes]]:
    """Every tamper class of the receipts tests, as (genesis to verify against, bundle bytes)."""
    g = GENESIS
    cases: dict[str, tuple[Genesis, bytes]] = {}
    # seals and headers (test_verify.py)
    by_key = sorted(VALIDATORS, key=lambda v: v.public_key)
    few = DevChain(g, list(VALIDATORS), duckdb.connect())
    few.add_block([ReceiptIssuer(PROCESSING).issue("data.store", height=1, subject=VALID_FIELDS["data.store"][0],
                                                   fields=VALID_FIELDS["data.store"][1])], signers=by_key[:2])
    cases["too few seals"] = (g, _kinds_bundle(few, 0))
    outsiders = DevChain(g, list(VALIDATORS), duckdb.connect())
    outsiders.add_block([ReceiptIssuer(PROCESSING).issue("data.store", height=1, subject=VALID_FIELDS["data.store"][0],
                                                         fields=VALID_FIELDS["data.store"][1])], signers=OUTSIDERS)
    cases["seals of non-validators"] = (g, _kinds_bundle(outsiders, 0))
    bundle = decode_bundle(_kinds_bundle(chain, 1))
    header = BlockHeader.from_value(codec.decode(bundle.header))
    forged = codec.encode(replace(header, timestamp_ms=header.timestamp_ms + 1).to_value())
    cases["forged header, seals of the real one"] = (g, replace(bundle, header=forged).encode())
    cases["seals of another block"] = (g, replace(bundle, seals=chain.blocks[1].seals).encode())
    cases["seals from another round"] = (g, replace(bundle, commit_round=bundle.commit_round + 1).encode())
    cases["forged header sealed by outsiders"] = (g, replace(bundle, seals=seal_block(chain.blocks[0].unsealed(), OUTSIDERS).seals).encode())
    cases["two seals of a quorum of three"] = (g, replace(bundle, seals=bundle.seals[:2]).encode())
    # the chain and the genesis
    cases["same validators, another chain id"] = (dev_genesis(VALIDATORS, chain_id="metanode-other"), _kinds_bundle(chain, 0))
    cases["other validators"] = (dev_genesis(OUTSIDERS), _kinds_bundle(chain, 0))
    other = dev_genesis(VALIDATORS, chain_id="metanode-other")
    other_chain = DevChain(other, list(VALIDATORS), duckdb.connect())
    other_chain.add_block([ReceiptIssuer(PROCESSING).issue("data.store", height=1, subject=VALID_FIELDS["data.store"][0],
                                                           fields=VALID_FIELDS["data.store"][1])])
    entry = ValidatorSetEntry(0, g.hash, g.validators)
    cases["a header of another chain, relabelled"] = (g, replace(decode_bundle(_kinds_bundle(other_chain, 0)), validator_sets=(entry,)).encode())
    twin = _twin(g)
    plain = decode_bundle(_kinds_bundle(chain, 0))
    cases["relabelled to the twin genesis"] = (twin, replace(plain, validator_sets=(ValidatorSetEntry(0, twin.hash, twin.validators),)).encode())
    cases["unrelabelled, against the twin"] = (twin, plain.encode())
    twin_chain = DevChain(twin, list(VALIDATORS), duckdb.connect())
    twin_chain.add_block([ReceiptIssuer(PROCESSING).issue("data.store", height=1, subject=VALID_FIELDS["data.store"][0],
                                                          fields=VALID_FIELDS["data.store"][1])])
    twin_bundle = decode_bundle(_kinds_bundle(twin_chain, 0))
    cases["twin chain's bundle, valid against the twin"] = (twin, twin_bundle.encode())
    cases["twin chain's bundle relabelled to the original"] = (g, replace(twin_bundle, validator_sets=(entry,)).encode())
    cases["a second genesis-shaped set"] = (g, replace(plain, validator_sets=(entry, replace(entry, from_height=2))).encode())
    cases["a set from height 1"] = (g, replace(plain, validator_sets=(replace(entry, from_height=1),)).encode())
    cases["another set"] = (g, replace(plain, validator_sets=(replace(entry, validators=entry.validators[:3]),)).encode())
    # witnesses
    for index, witness in ((5, codec.encode(_witness_record("another result"))), (0, codec.encode(_witness_record("ok"))),
                           (11, codec.encode({"version": 1})), (17, b"\x00not a record"),
                           (5, codec.encode({**_witness_record("ok"), "version": True})),
                           (5, codec.encode({**_witness_record("ok"), "version": 2})),
                           (5, codec.encode({**_witness_record("ok"), "exit": {"status": "killed", "signal": 9}})),
                           (5, codec.encode({**_witness_record("ok"), "job_seed": b"short"}))):
        case = replace(decode_bundle(_kinds_bundle(chain, index)), witness=witness)
        cases[f"witness {witness[:24].hex()} on leaf {index}"] = (g, case.encode())
    # the validator set chain (test_bundle_set_changes.py)
    after = decode_bundle(_changing_bundle(grown, grown.after))
    genesis_entry, first, second = after.validator_sets
    between = decode_bundle(_changing_bundle(grown, grown.between))
    before = decode_bundle(_changing_bundle(grown, grown.before))
    sets = {
        "first transition removed": (after, (genesis_entry, second)),
        "last transition removed": (after, (genesis_entry, first)),
        "both transitions removed": (after, (genesis_entry,)),
        "between, its transition removed": (between, between.validator_sets[:1]),
        "transitions swapped": (after, (genesis_entry, second, first)),
        "second transition moved to 6": (after, (genesis_entry, first, replace(second, from_height=6))),
        "first transition twice": (after, (genesis_entry, first, first)),
        "a genesis entry as a transition": (after, (genesis_entry, replace(genesis_entry, from_height=2))),
        "a transition after the sealing height": (between, after.validator_sets),
        "a change and its undoing": (before, (*after.validator_sets[:2], ValidatorSetTransition(
            9, g.validator_set.keys, second.header, second.commit_round, second.seals))),
    }
    for name, (base, links) in sets.items():
        cases[name] = (g, replace(base, validator_sets=links).encode())
    proof_block = grown.chain.blocks[first.from_height - 2]
    resealed = seal_block(proof_block.unsealed(), [NEWCOMER, *VALIDATORS[:3]], proof_block.commit_round)
    cases["transition sealed by the new set"] = (g, replace(after, validator_sets=(genesis_entry, replace(first, seals=resealed.seals), second)).encode())
    cases["transition with two seals"] = (g, replace(after, validator_sets=(genesis_entry, replace(first, seals=first.seals[:2]), second)).encode())
    b_entry, b_first = between.validator_sets
    outsider_set = ValidatorSet([*g.validator_set.keys, bytes(range(32))])
    b_header = BlockHeader.from_value(codec.decode(b_first.header))
    forged_next = codec.encode(replace(b_header, next_validators_hash=outsider_set.hash).to_value())
    cases["forged next_validators_hash"] = (g, replace(between, validator_sets=(b_entry, replace(b_first, header=forged_next, validators=outsider_set.keys))).encode())
    cases["transition claiming another set"] = (g, replace(between, validator_sets=(b_entry, replace(b_first, validators=outsider_set.keys))).encode())
    unchanged = grown.chain.blocks[0]
    cases["a header that changed nothing"] = (g, replace(between, validator_sets=(b_entry, replace(
        b_first, header=codec.encode(unchanged.header.to_value()), commit_round=unchanged.commit_round,
        seals=unchanged.seals, from_height=2))).encode())
    cases["a transition to the same set"] = (g, replace(between, validator_sets=(b_entry, replace(b_first, validators=g.validator_set.keys))).encode())
    twin_grown = DevChain(twin, list(VALIDATORS), duckdb.connect())
    twin_grown.add_block()
    twin_grown.change_validators(GROWN)
    for _ in range(3):
        twin_grown.add_block()
    twin_links = validator_set_chain(twin_grown.block_source(), twin, 4, twin_grown.validator_history)
    cases["a transition of the twin chain"] = (g, replace(between, validator_sets=(b_entry, twin_links[1])).encode())
    grown_set = ValidatorSet(v.public_key for v in GROWN)
    a_header = BlockHeader.from_value(codec.decode(after.header))
    renamed = codec.encode(replace(a_header, validators_hash=grown_set.hash).to_value())
    cases["sealing header renamed to the set of 5"] = (g, replace(after, header=renamed, validator_sets=after.validator_sets[:2]).encode())
    last_block = grown.chain.blocks[-1]
    leaver_sealed = seal_block(last_block.unsealed(), [LEAVER, *sorted(SHRUNK, key=lambda v: v.public_key)[:2]])
    cases["the leaver's seal after it left"] = (g, replace(after, seals=leaver_sealed.seals).encode())
    value = codec.decode(after.encode())
    for field, replacement in (("header", b"\x01\x02"), ("seals", list(reversed(value["validator_sets"][1]["seals"]))),
                               ("validators", list(reversed(value["validator_sets"][1]["validators"]))), ("commit_round", None)):
        broken = codec.decode(after.encode())
        if replacement is None:
            del broken["validator_sets"][1][field]
        else:
            broken["validator_sets"][1][field] = replacement
        cases[f"malformed transition {field}"] = (g, codec.encode(broken))
    for version in (1, 3, True, "2"):
        old = codec.decode(before.encode())
        old["version"] = version
        cases[f"version {version!r}"] = (g, codec.encode(old))
    oversized = codec.decode(after.encode())
    oversized["witness"] = bytes(8 * 1024 * 1024)
    cases["larger than 8 MiB"] = (g, codec.encode(oversized))
    return cases


# -- the tests ----------------------------------------------------------------------------------
def test_valid_bundles_verify_in_the_browser_as_in_python(verifier_page: Any, kinds_chain: DevChain, changing: ChangingChain) -> None:
    bundles = [_kinds_bundle(kinds_chain, i) for i in range(len(kinds_chain.receipts))]
    bundles.append(_kinds_bundle(kinds_chain, 5, encode_witness_file(_witness_record("ok"), {"input_paths": {}})))
    bundles += [_changing_bundle(changing, r) for r in (changing.before, changing.between, changing.after, changing.newcomer_before,
                                                        changing.newcomer_after, changing.leaver_after)]
    results = _browser(verifier_page, GENESIS, bundles)
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
    cases = _tampered_cases(kinds_chain, changing)
    by_genesis: dict[bytes, list[str]] = {}
    for name, (genesis, _data) in cases.items():
        by_genesis.setdefault(genesis.hash, []).append(name)
    codes: set[int] = set()
    for names in by_genesis.values():
        genesis = cases[names[0]][0]
        verifier = BundleVerifier(genesis)
        results = _browser(verifier_page, genesis, [cases[name][1] for name in names])
        for name, result in zip(names, results, strict=True):
            expected = _python(verifier, cases[name][1])
            assert tuple(result[:3]) == expected, f"{name}: browser {result}, python {expected}"
            codes.add(expected[2])
    assert codes >= {0, 10, 13, 14, 16}, codes


def test_issuer_policies_agree(verifier_page: Any, kinds_chain: DevChain, changing: ChangingChain) -> None:
    bundles = [_changing_bundle(changing, r) for r in (changing.newcomer_after, changing.newcomer_before, changing.leaver_after, changing.after)]
    strict = BundleVerifier(GENESIS, issuer_allowed=sealing_validators)
    results = _browser(verifier_page, GENESIS, bundles, "validators")
    assert [tuple(r[:3]) for r in results] == [_python(strict, b) for b in bundles]
    assert [r[2] for r in results] == [0, 17, 17, 17]
    listed = [PROCESSING.public_key]
    by_list = BundleVerifier(GENESIS, issuer_allowed=issuers_in(listed))
    both = [_kinds_bundle(kinds_chain, 0), bundles[0]]
    results = _browser(verifier_page, GENESIS, both, [k.hex() for k in listed])
    assert [tuple(r[:3]) for r in results] == [_python(by_list, b) for b in both] == [(True, None, 0), (False, "issuer", 17)]


@pytest.mark.parametrize("which", ["two transitions", "witness"])
def test_every_single_byte_flip_agrees_with_python(
    verifier_page: Any, kinds_chain: DevChain, changing: ChangingChain, which: str
) -> None:
    if which == "two transitions":
        data = _changing_bundle(changing, changing.after)
        assert len(decode_bundle(data).validator_sets) == 3
    else:
        data = _kinds_bundle(kinds_chain, 5, encode_witness_file(_witness_record("ok"), {"input_paths": {}}))
    flips = [(offset, mask) for offset in range(len(data)) for mask in (0x01, 0x80, 0xFF)]
    results = verifier_page.evaluate(_VERIFY_FLIPS, [_genesis_cbor(GENESIS), data.hex(), flips])
    verifier = BundleVerifier(GENESIS)
    seen: dict[int, int] = {}
    for (offset, mask), result in zip(flips, results, strict=True):
        flipped = bytearray(data)
        flipped[offset] ^= mask
        expected = _python(verifier, bytes(flipped))
        assert tuple(result) == expected, f"byte {offset} ^ {mask:#x}: browser {result}, python {expected}"
        seen[expected[2]] = seen.get(expected[2], 0) + 1
    assert set(seen) >= {10, 11, 12, 13, 14}, seen


_DECODE = """async (inputs) => {
  const { decode, encode, fromHex, toHex } = await import("/verify/cbor.js");
  const describe = (v) => v === null ? ["n"] : typeof v === "boolean" ? ["?", v]
    : typeof v === "number" || typeof v === "bigint" ? ["i", String(v)]
    : v instanceof Uint8Array ? ["b", toHex(v)] : typeof v === "string" ? ["t", v]
    : Array.isArray(v) ? ["a", v.map(describe)] : ["m", [...v.entries()].map(([k, x]) => [k, describe(x)])];
  return inputs.map((hex) => {
    try { const v = decode(fromHex(hex)); return [describe(v), toHex(encode(v))]; } catch (e) { return null; }
  });
}"""


def _describe(value: Any) -> list[Any]:
    if value is None:
        return ["n"]
    if isinstance(value, bool):
        return ["?", value]
    if isinstance(value, int):
        return ["i", str(value)]
    if isinstance(value, bytes):
        return ["b", value.hex()]
    if isinstance(value, str):
        return ["t", value]
    if isinstance(value, list):
        return ["a", [_describe(v) for v in value]]
    return ["m", [[k, _describe(v)] for k, v in value.items()]]


def test_the_cbor_decoder_accepts_exactly_what_codec_decode_accepts(verifier_page: Any) -> None:
    rng = random.Random(17)
    vectors = [
        "a7616e39012b617601626f6bf56373696742010264696e747384171818190100" "1b0000000100000000646e616d656573616c6573646e6f6e65f6",
        "1801", "a16161f6a0", "a2616101616101", "f93c00", "c24101", "a1016161", "5f41ff", "", "17", "1818", "190100", "1900ff",
        "1a00010000", "1a0000ffff", "1b0000000100000000", "1b00000000ffffffff", "1bffffffffffffffff", "3bffffffffffffffff",
        "1b001fffffffffffff", "1b0020000000000000", "3b001fffffffffffff", "3b0020000000000000", "f4", "f5", "f6", "f7", "f0",
        "f818", "fb3ff0000000000000", "ff", "1c", "9f01ff", "bf6161f6ff", "7f6161ff", "63efbbbf", "63eda080", "62c0af",
        "64f4908080", "64f48fbfbf", "a26162f66161f6", "a2616101616202", "a26161016162", "a1616180", "a1400180", "d90100 80".replace(" ", ""),
        "4200", "43000102", "6161", "62616263", "80", "a0", "8180", "820102", "a1616101", "a161618201a0",
        "81" * 64 + "80", "81" * 64 + "8100", "81" * 64 + "a0", "81" * 63 + "a1616100", "81" * 65 + "80",
        "5a00000001ff", "5b000000000000000100", "7800", "781861616161616161616161616161616161616161616161",
    ]
    samples = [codec.encode(v) for v in (
        {"n": -300, "v": 1, "ok": True, "sig": b"\x01\x02", "ints": [23, 24, 256, 2**32], "name": "sales", "none": None},
        [2**64 - 1, -(2**64), 2**53, -(2**53), "é€😀", {"": [], "a": {"b": [b""]}}], {"x" * 30: 1, "y" * 25: [False]},
    )]
    for sample in samples:
        vectors.append(sample.hex())
        for _ in range(300):
            mutated = bytearray(sample)
            for _ in range(rng.randint(1, 3)):
                choice = rng.random()
                at = rng.randrange(len(mutated))
                if choice < 0.6:
                    mutated[at] ^= 1 << rng.randrange(8)
                elif choice < 0.8:
                    del mutated[at]
                else:
                    mutated.insert(at, rng.randrange(256))
            vectors.append(bytes(mutated).hex())
    vectors += [bytes(rng.randrange(256) for _ in range(rng.randint(1, 6))).hex() for _ in range(3000)]
    results = verifier_page.evaluate(_DECODE, vectors)
    accepted = 0
    for hex_input, result in zip(vectors, results, strict=True):
        try:
            value = codec.decode(bytes.fromhex(hex_input))
        except codec.CodecError:
            assert result is None, f"{hex_input}: the browser accepts what codec.decode refuses"
            continue
        accepted += 1
        assert result == [_describe(value), hex_input], f"{hex_input}: browser {result}"
    assert 300 < accepted < len(vectors) - 1000, accepted


_ED25519 = """async (vectors) => {
  const { verifySignature } = await import("/verify/crypto.js");
  const { fromHex } = await import("/verify/cbor.js");
  const out = [];
  for (const [key, message, signature] of vectors) {
    out.push(await verifySignature(fromHex(key), "metanode/test/v1", fromHex(message), fromHex(signature)));
  }
  return out;
}"""

_L = 2**252 + 27742317777372353535851937790883648493
_SMALL_ORDER = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]


def test_ed25519_in_the_browser_accepts_exactly_what_libsodium_accepts(verifier_page: Any) -> None:
    """Web Crypto (BoringSSL) is laxer than libsodium on small-order points;
    crypto.js closes the gap. Vectors: good signatures, the small-order and
    non-canonical keys, a small-order R with S = 0 (which an identity key
    'verifies' under RFC 8032), a non-canonical S, and damaged signatures."""
    signer = Identity.from_label("browser-verifier-ed25519")
    message = b"a sealed header"
    good = signer.sign("metanode/test/v1", message)
    key = signer.public_key
    s = int.from_bytes(good[32:], "little")
    vectors: list[tuple[bytes, bytes, bytes]] = [(key, message, good), (key, message + b"!", good),
                                                 (key, message, good[:32] + (s + _L).to_bytes(32, "little")),
                                                 (key, message, bytes([good[0] ^ 1]) + good[1:])]
    for point in _SMALL_ORDER:
        raw = bytes.fromhex(point)
        for variant in (raw, raw[:31] + bytes([raw[31] | 0x80])):
            vectors.append((variant, message, variant + bytes(32)))  # R = A (small order), S = 0
            vectors.append((variant, message, bytes.fromhex(_SMALL_ORDER[1]) + bytes(32)))
            vectors.append((key, message, variant + good[32:]))
    non_canonical = bytes([0xef]) + b"\xff" * 30 + b"\x7f"
    vectors += [(non_canonical, message, good), (bytes(31) + b"\x80", message, good)]
    results = verifier_page.evaluate(_ED25519, [[k.hex(), m.hex(), sig.hex()] for k, m, sig in vectors])
    expected = [nacl_verify(k, "metanode/test/v1", m, sig) for k, m, sig in vectors]
    assert results == expected
    assert expected[0] and sum(expected) == 1


def test_a_genesis_that_is_not_a_canonical_genesis_value_is_a_usage_error(verifier_page: Any, kinds_chain: DevChain) -> None:
    data = _kinds_bundle(kinds_chain, 0)
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
              "subject": _digest("job"), "prev": None}
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
    bundles = [_kinds_bundle(dev, i) for i in range(len(receipts))]
    verifier = BundleVerifier(GENESIS)
    results = _browser(verifier_page, GENESIS, bundles)
    outcomes = {}
    for name, data, result in zip(names, bundles, results, strict=True):
        expected = _python(verifier, data)
        assert tuple(result[:3]) == expected, f"{name}: browser {result}, python {expected}"
        outcomes[name] = expected[0]
    assert outcomes["assignee with a trailing NEL (Python strips it)"] and outcomes["size 2**53 + 1"]
    assert not outcomes["signed by the identity point"] and not outcomes["skipped_rows 0"]


def _peer_id(public_key: bytes) -> str:
    from node.base.keys import peer_id_from_public_key

    return peer_id_from_public_key(public_key)


def test_bundle_objects_are_what_the_builders_return(kinds_chain: DevChain) -> None:
    """Guard for the cases above: the bundles really are version 2 bundles of the chains' genesis."""
    assert isinstance(decode_bundle(_kinds_bundle(kinds_chain, 0)), Bundle)
    assert GENESIS == dev_genesis(dev_identities(4))
