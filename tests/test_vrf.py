"""RFC 9381 ECVRF-EDWARDS25519-SHA512-TAI (node/base/vrf.py).

The RFC's own vectors fix the construction; the reference (pure Python)
group and the libsodium-backed one must both reproduce them, and agree with
each other on the inputs where libsodium refuses and the module falls back.
The adversarial tests build proofs the way an attacker would: a proof under a
small-order key, and a second Gamma for the same input (cofactor clearing
must give it the same output).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import nacl.signing
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.base import vrf
from node.base.keys import Identity

# RFC 9381 Appendix B.3, Examples 16, 17 and 18 (ECVRF-EDWARDS25519-SHA512-TAI): SK, PK,
# alpha, H (encode_to_curve's output), k (the nonce, little-endian), U = k*B, V = k*H, pi, beta.
# Transcribed from the RFC as published in the solana-ecvrf 0.0.1 crate's tests/vectors.json
# (https://docs.rs/crate/solana-ecvrf/latest/source/tests/vectors.json: SK, PK, alpha, pi, beta);
# H, k, U and V are the RFC's intermediate values of the same examples.
RFC9381_B3 = [
    pytest.param(
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "91bbed02a99461df1ad4c6564a5f5d829d0b90cfc7903e7a5797bd658abf3318",
        "8a49edbd1492a8ee09766befe50a7d563051bf3406cbffc20a88def030730f0f",
        "aef27c725be964c6a9bf4c45ca8e35df258c1878b838f37d9975523f09034071",
        "5016572f71466c646c119443455d6cb9b952f07d060ec8286d678615d55f954f",
        "8657106690b5526245a92b003bb079ccd1a92130477671f6fc01ad16f26f723f"
        "26f8a57ccaed74ee1b190bed1f479d9727d2d0f9b005a6e456a35d4fb0daab12"
        "68a1b0db10836d9826a528ca76567805",
        "90cf1df3b703cce59e2a35b925d411164068269d7b2d29f3301c03dd757876ff66b71dda49d2de59d03450451af026798e8f81cd2e333de5cdf4f3e140fdd8ae",
        id="example16",
    ),
    pytest.param(
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "5b659fc3d4e9263fd9a4ed1d022d75eaacc20df5e09f9ea937502396598dc551",
        "d8c3a66921444cb3427d5d989f9b315aa8ca3375e9ec4d52207711a1fdb44107",
        "1dcb0a4821a2c48bf53548228b7f170962988f6d12f5439f31987ef41f034ab3",
        "fd03c0bf498c752161bae4719105a074630a2aa5f200ff7b3995f7bfb1513423",
        "f3141cd382dc42909d19ec5110469e4feae18300e94f304590abdced48aed593"
        "3bf0864a62558b3ed7f2fea45c92a465301b3bbf5e3e54ddf2d935be3b67926d"
        "a3ef39226bbc355bdc9850112c8f4b02",
        "eb4440665d3891d668e7e0fcaf587f1b4bd7fbfe99d0eb2211ccec90496310eb5e33821bc613efb94db5e5b54c70a848a0bef4553a41befc57663b56373a5031",
        id="example17",  # try-and-increment succeeds at ctr = 1 here
    ),
    pytest.param(
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "bf4339376f5542811de615e3313d2b36f6f53c0acfebb482159711201192576a",
        "5ffdbc72135d936014e8ab708585fda379405542b07e3bd2c0bd48437fbac60a",
        "2bae73e15a64042fcebf062abe7e432b2eca6744f3e8265bc38e009cd577ecd5",
        "88cba1cb0d4f9b649d9a86026b69de076724a93a65c349c988954f0961c5d506",
        "9bc0f79119cc5604bf02d23b4caede71393cedfbb191434dd016d30177ccbf80"
        "96bb474e53895c362d8628ee9f9ea3c0e52c7a5c691b6c18c9979866568add7a"
        "2d41b00b05081ed0f58ee5e31b3a970e",
        "645427e5d00c62a23fb703732fa5d892940935942101e456ecca7bb217c61c452118fec1219202a0edcf038bb6373241578be7217ba85a2687f7a0310b2df19f",
        id="example18",
    ),
]

GROUPS = [pytest.param(vrf._FAST, id="libsodium"), pytest.param(vrf._REFERENCE, id="reference")]
FAST_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW_SETTINGS = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])

seeds = st.binary(min_size=32, max_size=32)
alphas = st.binary(max_size=96)


def _le(value: int) -> bytes:
    return value.to_bytes(32, "little")


def _order8_point() -> bytes:
    """A point of order exactly 8: L times a curve point with a full torsion component."""
    for counter in range(256):
        candidate = vrf._ref_decode(hashlib.sha512(bytes([counter])).digest()[:32])
        if candidate is None:
            continue
        torsion = vrf._ref_mul(vrf._L, candidate)
        if vrf._ref_encode(vrf._ref_mul(4, torsion)) != vrf.IDENTITY:
            return vrf._ref_encode(torsion)
    raise AssertionError("no order-8 point found")


T8 = _order8_point()
SMALL_ORDER_POINTS = sorted({vrf._REFERENCE.mul(i, T8) for i in range(8)})


# -- the RFC's vectors ------------------------------------------------------------------
@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize(("sk", "pk", "alpha", "h", "k", "u", "v", "pi", "beta"), RFC9381_B3)
def test_rfc9381_vectors(group, sk, pk, alpha, h, k, u, v, pi, beta):
    seed, alpha_bytes = bytes.fromhex(sk), bytes.fromhex(alpha)
    assert bytes(nacl.signing.SigningKey(seed).verify_key).hex() == pk  # VRF key = Ed25519 key
    x, nonce_key = vrf._expand_secret(seed)
    assert group.base_mul(x).hex() == pk
    h_point = vrf._encode_to_curve(group, bytes.fromhex(pk), alpha_bytes)
    assert h_point.hex() == h
    nonce = int.from_bytes(hashlib.sha512(nonce_key + h_point).digest(), "little") % vrf._L
    assert _le(nonce).hex() == k
    assert group.base_mul(nonce).hex() == u
    assert group.mul(nonce, h_point).hex() == v
    assert vrf._prove(group, seed, alpha_bytes).hex() == pi
    assert vrf._verify(group, bytes.fromhex(pk), bytes.fromhex(pi), alpha_bytes).hex() == beta


@pytest.mark.parametrize(("sk", "pk", "alpha", "h", "k", "u", "v", "pi", "beta"), RFC9381_B3)
def test_public_api_on_rfc9381_vectors(sk, pk, alpha, h, k, u, v, pi, beta):
    seed, public_key, alpha_bytes = bytes.fromhex(sk), bytes.fromhex(pk), bytes.fromhex(alpha)
    proof = vrf.prove(seed, alpha_bytes)
    assert proof.hex() == pi and len(proof) == vrf.PROOF_LEN
    assert vrf.verify(public_key, proof, alpha_bytes).hex() == beta
    assert vrf.proof_to_hash(proof).hex() == beta
    assert vrf.verify(public_key, bytearray(proof), memoryview(alpha_bytes)).hex() == beta


# -- libsodium path == plain RFC arithmetic ---------------------------------------------
@SLOW_SETTINGS
@given(seed=seeds, alpha=alphas)
def test_fast_prove_equals_reference(seed, alpha):
    assert vrf.prove(seed, alpha) == vrf._prove(vrf._REFERENCE, seed, alpha)


@FAST_SETTINGS
@given(encoding=st.binary(min_size=32, max_size=32))
def test_point_decoding_matches_rfc8032(encoding):
    assert vrf._FAST.string_to_point(encoding) == vrf._REFERENCE.string_to_point(encoding)
    assert vrf._FAST.decode_times_cofactor(encoding) == vrf._REFERENCE.decode_times_cofactor(encoding)


def test_non_canonical_encodings_are_refused():
    """libsodium decodes y >= p and a sign bit on x = 0; RFC 8032 does not."""
    p = vrf._P
    for y in range(19):
        for sign in (0, 1):
            encoding = _le((y + p) | (sign << 255))  # y + p: the non-canonical form of y
            for group in (vrf._FAST, vrf._REFERENCE):
                assert group.string_to_point(encoding) is None
                assert group.decode_times_cofactor(encoding) is None
    for y in (1, p - 1):  # the two points with x = 0: a set sign bit is not canonical
        assert vrf._FAST.string_to_point(_le(y)) == _le(y)
        for group in (vrf._FAST, vrf._REFERENCE):
            assert group.string_to_point(_le(y | (1 << 255))) is None
            assert group.decode_times_cofactor(_le(y | (1 << 255))) is None


@SLOW_SETTINGS
@given(seed=seeds, scalar=st.one_of(st.integers(0, 2**255 - 1), st.sampled_from([0, 1, 8, vrf._L, 2 * vrf._L, vrf._L - 1, 2**255 + 3, 2**256 + 5])))
def test_scalar_multiplication_where_libsodium_refuses(seed, scalar):
    """Mixed-order, small-order points, zero scalars and identity results go to the reference code."""
    prime_order = vrf._FAST.base_mul(vrf._expand_secret(seed)[0])
    for point in (prime_order, vrf._FAST.add(prime_order, T8), T8, vrf.IDENTITY):
        assert vrf._FAST.mul(scalar, point) == vrf._REFERENCE.mul(scalar, point)
        assert vrf._FAST.times_cofactor(point) == vrf._REFERENCE.times_cofactor(point)
    assert vrf._FAST.base_mul(scalar) == vrf._REFERENCE.base_mul(scalar)


# -- properties -------------------------------------------------------------------------
@FAST_SETTINGS
@given(seed=seeds, alpha=alphas)
def test_round_trip_and_determinism(seed, alpha):
    public_key = bytes(nacl.signing.SigningKey(seed).verify_key)
    proof = vrf.prove(seed, alpha)
    beta = vrf.verify(public_key, proof, alpha)
    assert len(beta) == vrf.OUTPUT_LEN
    assert beta == vrf.proof_to_hash(proof)
    assert vrf.prove(seed, alpha) == proof  # one proof per key and input


@FAST_SETTINGS
@given(seed=seeds, alpha=alphas, position=st.integers(0, vrf.PROOF_LEN * 8 - 1))
def test_tampered_proof_is_refused(seed, alpha, position):
    public_key = bytes(nacl.signing.SigningKey(seed).verify_key)
    tampered = bytearray(vrf.prove(seed, alpha))
    tampered[position // 8] ^= 1 << (position % 8)
    with pytest.raises(vrf.VrfError):
        vrf.verify(public_key, bytes(tampered), alpha)


@FAST_SETTINGS
@given(seed=seeds, other_seed=seeds, alpha=alphas, other_alpha=alphas)
def test_other_input_or_key_is_refused(seed, other_seed, alpha, other_alpha):
    proof = vrf.prove(seed, alpha)
    public_key = bytes(nacl.signing.SigningKey(seed).verify_key)
    if other_alpha != alpha:
        with pytest.raises(vrf.VrfError, match="does not verify"):
            vrf.verify(public_key, proof, other_alpha)
    if other_seed != seed:
        with pytest.raises(vrf.VrfError, match="does not verify"):
            vrf.verify(bytes(nacl.signing.SigningKey(other_seed).verify_key), proof, alpha)


def test_outputs_differ_between_inputs_and_keys():
    a, b = Identity.from_label("vrf-a"), Identity.from_label("vrf-b")
    outputs = {vrf.proof_to_hash(identity.vrf_prove(alpha)) for identity in (a, b) for alpha in (b"1", b"2")}
    assert len(outputs) == 4


# -- key validation (RFC 9381 5.4.5) ----------------------------------------------------
def test_small_order_list_is_the_torsion_subgroup():
    """The module's hard-coded list (the fast key check) is exactly {i * T8}."""
    assert len(SMALL_ORDER_POINTS) == 8 and vrf.IDENTITY in SMALL_ORDER_POINTS
    assert set(SMALL_ORDER_POINTS) == vrf.SMALL_ORDER_POINTS
    for point in SMALL_ORDER_POINTS:
        assert vrf._FAST.has_small_order(point) and vrf._REFERENCE.has_small_order(point)
        mixed = vrf._FAST.add(point, vrf._FAST.base_mul(5))  # a torsion component alone is not small order
        assert not vrf._FAST.has_small_order(mixed) and not vrf._REFERENCE.has_small_order(mixed)


@pytest.mark.parametrize("group", GROUPS)
def test_small_order_keys_are_refused_even_with_a_proof_that_checks_out(group):
    """The identity key with 'secret' x = 0: Gamma = identity, s = k. The proof passes
    steps 7-11 of verification, so only key validation stands between it and acceptance."""
    alpha = b"metanode small-order key"
    key = vrf.IDENTITY
    h = vrf._encode_to_curve(group, key, alpha)
    k = 123456789
    gamma = vrf.IDENTITY
    c = vrf._challenge(key, h, gamma, group.base_mul(k), group.mul(k, h))
    forged = gamma + c.to_bytes(16, "little") + _le(k)
    u = group.sub(group.base_mul(k), group.mul(c, key))
    v = group.sub(group.mul(k, h), group.mul(c, gamma))
    assert vrf._challenge(key, h, gamma, u, v) == c  # the challenge equation holds
    with pytest.raises(vrf.VrfError, match="small order"):
        vrf._verify(group, key, forged, alpha)
    for small in SMALL_ORDER_POINTS:
        with pytest.raises(vrf.VrfError, match="small order"):
            vrf._verify(group, small, forged, alpha)


def test_invalid_public_keys_are_refused():
    proof = vrf.prove(bytes(32), b"x")
    not_on_curve = next(_le(y) for y in range(2, 100) if vrf._ref_decode(_le(y)) is None)
    for key, message in [
        (bytes(31), "32 bytes"),
        (b"", "32 bytes"),
        ("ab" * 16, "32 bytes"),
        (not_on_curve, "not a valid Edwards25519 point"),
        (_le(vrf._P + 1), "not a valid Edwards25519 point"),  # the identity, written non-canonically
    ]:
        with pytest.raises(vrf.VrfError, match=message):
            vrf.verify(key, proof, b"x")


# -- proof decoding (RFC 9381 5.4.4) and cofactor clearing ------------------------------
def test_malformed_proofs_are_refused():
    identity = Identity.from_label("vrf-malformed")
    proof = identity.vrf_prove(b"x")
    not_on_curve = next(_le(y) for y in range(2, 100) if vrf._ref_decode(_le(y)) is None)
    cases = [
        (proof[:-1], "80 bytes"),
        (proof + b"\x00", "80 bytes"),
        ("00" * 80, "80 bytes"),
        (not_on_curve + proof[32:], "Gamma is not a valid"),
        (_le(vrf._P + 1) + proof[32:], "Gamma is not a valid"),
        (proof[:48] + _le(vrf._L), "s is not reduced"),
        (proof[:48] + b"\xff" * 32, "s is not reduced"),
    ]
    for pi, message in cases:
        with pytest.raises(vrf.VrfError, match=message):
            vrf.verify(identity.public_key, pi, b"x")
        with pytest.raises(vrf.VrfError, match=message):
            vrf.proof_to_hash(pi)


def test_bad_secret_and_alpha_types_are_refused():
    with pytest.raises(vrf.VrfError, match="32 bytes"):
        vrf.prove(bytes(31), b"x")
    with pytest.raises(vrf.VrfError, match="byte string"):
        vrf.prove(bytes(32), "x")
    with pytest.raises(vrf.VrfError, match="byte string"):
        vrf.verify(Identity.from_label("a").public_key, bytes(80), "x")


def _torsioned_proof(group, seed: bytes, alpha: bytes, torsion: bytes) -> bytes:
    """A second, RFC-valid proof for (key, alpha) whose Gamma is x*H + torsion.

    V = s*H - c*Gamma' = k*H - (c mod 8)*torsion, so the prover guesses c mod 8
    before hashing and keeps the nonce for which a guess comes true.
    """
    x, _ = vrf._expand_secret(seed)
    key = group.base_mul(x)
    h = vrf._encode_to_curve(group, key, alpha)
    gamma = group.add(group.mul(x, h), torsion)
    for k in range(1, 200):
        u = group.base_mul(k)
        for guess in range(8):
            v = group.sub(group.mul(k, h), group.mul(guess, torsion))
            c = vrf._challenge(key, h, gamma, u, v)
            if c % 8 == guess:
                return gamma + c.to_bytes(16, "little") + _le((k + c * x) % vrf._L)
    raise AssertionError("no nonce worked")


@pytest.mark.parametrize("group", GROUPS)
def test_cofactor_clearing_gives_one_output_per_input(group):
    """A prover can publish Gamma with a small-order component added (the RFC does not
    require Gamma in the prime-order subgroup), but beta multiplies Gamma by the
    cofactor, so the output is the same: a proposer still has one seed per height."""
    seed, alpha = Identity.from_label("vrf-torsion").seed, b"height 7"
    honest = vrf._prove(group, seed, alpha)
    public_key = Identity.from_label("vrf-torsion").public_key
    twisted = _torsioned_proof(group, seed, alpha, T8)
    assert twisted[:32] != honest[:32]
    assert vrf._verify(group, public_key, twisted, alpha) == vrf._verify(group, public_key, honest, alpha)
    assert vrf.verify(public_key, twisted, alpha) == vrf.proof_to_hash(honest)


# -- the node's identity ----------------------------------------------------------------
def test_identity_vrf_prove_uses_the_identity_key():
    identity = Identity.from_label("vrf-identity")
    proof = identity.vrf_prove(b"metanode/seed")
    assert proof == vrf.prove(identity.seed, b"metanode/seed")
    assert vrf.verify(identity.public_key, proof, b"metanode/seed") == vrf.proof_to_hash(proof)
    with pytest.raises(vrf.VrfError, match="does not verify"):
        vrf.verify(Identity.from_label("someone else").public_key, proof, b"metanode/seed")


def test_docs_example_is_the_rfc_vector():
    """docs/vrf.md's worked example is Example 16, and the code reproduces it."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "vrf.md").read_text()
    block = text.split("## Example", 1)[1].split("```")[1]
    fields: dict[str, str] = {}
    name = ""
    for line in block.strip().splitlines():
        match = re.match(r"(\w+)\s*=\s*(.*)", line)
        if match:
            name, value = match.groups()
            fields[name] = value
        else:
            fields[name] += " " + line
    hexes = {key: "".join(re.findall(r"\b[0-9a-f]{32,}\b", value)) for key, value in fields.items()}
    seed = bytes.fromhex(hexes["SK"])
    proof = vrf.prove(seed, b"")
    assert proof.hex() == hexes["pi"]
    assert vrf.verify(bytes.fromhex(hexes["PK"]), proof, b"").hex() == hexes["beta"]
    assert vrf._encode_to_curve(vrf._FAST, bytes.fromhex(hexes["PK"]), b"").hex() == hexes["H"]
