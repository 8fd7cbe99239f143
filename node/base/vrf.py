"""RFC 9381 ECVRF-EDWARDS25519-SHA512-TAI: a verifiable random function over Ed25519 keys.

Why a VRF: a block's proposer must not be able to choose the seed that
drives a job's deterministic randomness. With a VRF the seed of a height is
a function of the proposer's key and an input fixed before the block is
built, so the proposer has exactly one seed to offer (it can only withhold
it, which costs it the round), and anyone can check it from the public key.

This module implements the ciphersuite ECVRF-EDWARDS25519-SHA512-TAI
(suite_string 0x03) of RFC 9381 exactly as sections 5 and 5.4/5.5 define it,
and is checked against the RFC's Appendix B.3 vectors (tests/test_vrf.py):

- keys are Ed25519 keys (RFC 8032 5.1.5): the secret scalar x is the clamped
  first half of SHA-512(seed), the public key Y = x*B; so a node's identity
  key is its VRF key;
- ``encode_to_curve`` is try-and-increment (5.4.1.1) salted with the public
  key string, its result multiplied by the cofactor 8;
- the nonce is RFC 8032-style (5.4.2.2): SHA-512(second half of SHA-512(seed) || H) mod L;
- pi = Gamma (32 bytes) || c (16 bytes, little-endian) || s (32 bytes, little-endian);
  beta = SHA-512(0x03 || 0x03 || cofactor*Gamma || 0x00) (64 bytes);
- verification (5.3) validates the public key (5.4.5: a valid, canonical
  encoding whose cofactor multiple is not the identity, so small-order keys
  are refused) and decodes Gamma and s (5.4.4: Gamma a valid encoding, s < L).

Points are handled as their canonical 32-byte encodings. The arithmetic is
done by libsodium (through PyNaCl) wherever libsodium computes exactly the
RFC's operation; libsodium's scalar multiplication refuses some inputs the
RFC allows (a zero scalar, an identity result, a point outside the
prime-order subgroup), and for those the same operation is done by the
pure-Python reference arithmetic below (extended twisted-Edwards
coordinates, RFC 8032 5.1). libsodium's point decoding accepts non-canonical
encodings that RFC 8032 refuses, so the canonical checks are done here first.
The reference group alone also runs the RFC vectors in the tests, so the fast
path is checked against plain RFC arithmetic.

The only exception raised for bad input is :class:`VrfError`, whose message
says which check failed.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import nacl.bindings as sodium
import nacl.exceptions

SUITE_STRING = b"\x03"
PROOF_LEN = 80  # ptLen + cLen + qLen
OUTPUT_LEN = 64  # beta: one SHA-512 digest
SECRET_SEED_LEN = 32
PUBLIC_KEY_LEN = 32

_PT_LEN = 32
_C_LEN = 16
_Q_LEN = 32
_COFACTOR = 8

# Domain separators (RFC 9381 5.2, 5.4.1.1, 5.4.3): front byte per function, 0x00 at the back.
_ENCODE_TO_CURVE_FRONT = b"\x01"
_CHALLENGE_FRONT = b"\x02"
_PROOF_TO_HASH_FRONT = b"\x03"
_BACK = b"\x00"

# edwards25519 (RFC 8032 5.1, table 1).
_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)
_BASE_Y = (4 * pow(5, _P - 2, _P)) % _P

IDENTITY = (1).to_bytes(32, "little")

# The eight points of small order (the torsion subgroup: 8*P is the identity), canonically
# encoded. RFC 9381 5.4.5 allows checking a key against this list instead of computing
# cofactor*Y; after string_to_point has refused non-canonical encodings the two are the same
# test (tests/test_vrf.py recomputes the list).
SMALL_ORDER_POINTS = frozenset(
    bytes.fromhex(encoding)
    for encoding in (
        "0100000000000000000000000000000000000000000000000000000000000000",  # identity
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # order 2 (y = -1)
        "0000000000000000000000000000000000000000000000000000000000000000",  # order 4 (y = 0)
        "0000000000000000000000000000000000000000000000000000000000000080",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    )
)


class VrfError(ValueError):
    """A VRF public key, proof or secret is malformed, or a proof does not verify."""


# -- reference arithmetic (RFC 8032 5.1) ------------------------------------------------
# A point in extended homogeneous coordinates (X, Y, Z, T), x = X/Z, y = Y/Z, x*y = T/Z.
_Point = tuple[int, int, int, int]


def _recover_x(y: int, sign: int) -> int | None:
    """The x of the point with this y and sign bit, or None (RFC 8032 5.1.3 steps 2-4)."""
    if y >= _P:
        return None
    u = (y * y - 1) % _P
    v = (_D * y * y + 1) % _P
    x = (u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P)) % _P
    vxx = (v * x * x) % _P
    if vxx == u:
        pass
    elif vxx == (-u) % _P:
        x = (x * _SQRT_M1) % _P
    else:
        return None
    if x == 0 and sign == 1:
        return None
    if x & 1 != sign:
        x = _P - x
    return x


def _ref_decode(encoding: bytes) -> _Point | None:
    """RFC 8032 5.1.3 decoding: None for an encoding that is not a canonical curve point."""
    if len(encoding) != 32:
        return None
    value = int.from_bytes(encoding, "little")
    y = value & ((1 << 255) - 1)
    x = _recover_x(y, value >> 255)
    if x is None:
        return None
    return (x, y, 1, (x * y) % _P)


def _ref_encode(point: _Point) -> bytes:
    """RFC 8032 5.1.2 encoding: y little-endian with the parity of x in the top bit."""
    x_, y_, z, _t = point
    z_inv = pow(z, _P - 2, _P)
    x = (x_ * z_inv) % _P
    y = (y_ * z_inv) % _P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _ref_add(a: _Point, b: _Point) -> _Point:
    """Complete addition for a = -1 twisted Edwards curves (RFC 8032 5.1.4)."""
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    aa = ((y1 - x1) * (y2 - x2)) % _P
    bb = ((y1 + x1) * (y2 + x2)) % _P
    cc = (t1 * 2 * _D * t2) % _P
    dd = (z1 * 2 * z2) % _P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return ((e * f) % _P, (g * h) % _P, (f * g) % _P, (e * h) % _P)


def _ref_mul(scalar: int, point: _Point) -> _Point:
    """scalar * point by double-and-add (variable time: reference and fallback only)."""
    result: _Point = (0, 1, 1, 0)
    addend = point
    while scalar > 0:
        if scalar & 1:
            result = _ref_add(result, addend)
        addend = _ref_add(addend, addend)
        scalar >>= 1
    return result


_REF_BASE = _ref_decode(_BASE_Y.to_bytes(32, "little"))
assert _REF_BASE is not None


def _is_canonical(encoding: bytes) -> bool:
    """Whether RFC 8032 could accept this encoding: y < p, and no sign bit on x = 0.

    x = 0 exactly when y = 1 or y = p - 1. libsodium decodes both of these
    non-canonical forms, RFC 8032 refuses them; the curve-equation check is
    left to the caller.
    """
    value = int.from_bytes(encoding, "little")
    y = value & ((1 << 255) - 1)
    if y >= _P:
        return False
    return not (value >> 255 and y in (1, _P - 1))


class _ReferenceGroup:
    """The group operations of RFC 9381 on canonical point encodings, in plain Python."""

    def string_to_point(self, encoding: bytes) -> bytes | None:
        """The encoding itself if it is a canonical curve point, else None (RFC 9381 5.5)."""
        return encoding if _ref_decode(encoding) is not None else None

    def _point(self, encoding: bytes) -> _Point:
        point = _ref_decode(encoding)
        assert point is not None, "only validated encodings reach the arithmetic"
        return point

    def add(self, a: bytes, b: bytes) -> bytes:
        return _ref_encode(_ref_add(self._point(a), self._point(b)))

    def sub(self, a: bytes, b: bytes) -> bytes:
        x, y, z, t = self._point(b)
        return _ref_encode(_ref_add(self._point(a), (_P - x, y, z, _P - t)))

    def mul(self, scalar: int, encoding: bytes) -> bytes:
        return _ref_encode(_ref_mul(scalar, self._point(encoding)))

    def base_mul(self, scalar: int) -> bytes:
        assert _REF_BASE is not None
        return _ref_encode(_ref_mul(scalar, _REF_BASE))

    def times_cofactor(self, encoding: bytes) -> bytes:
        doubled = self._point(encoding)
        for _ in range(3):
            doubled = _ref_add(doubled, doubled)
        return _ref_encode(doubled)

    def decode_times_cofactor(self, encoding: bytes) -> bytes | None:
        """cofactor * string_to_point(encoding), or None if the encoding is INVALID."""
        point = self.string_to_point(encoding)
        return None if point is None else self.times_cofactor(point)

    def has_small_order(self, encoding: bytes) -> bool:
        """Whether cofactor * point is the identity (RFC 9381 5.4.5 step 3)."""
        return self.times_cofactor(encoding) == IDENTITY


class _SodiumGroup(_ReferenceGroup):
    """The same operations through libsodium, falling back to the reference where libsodium refuses.

    libsodium's scalar multiplications return an error (never a wrong point)
    for a zero scalar, an identity result, or a point that is small-order or
    outside the prime-order subgroup; the RFC defines those cases, so they
    are computed by the reference code. libsodium clears a scalar's top bit,
    so a scalar of 2**255 or more (none of the RFC's is) goes to the reference too.
    """

    def string_to_point(self, encoding: bytes) -> bytes | None:
        if len(encoding) != 32 or not _is_canonical(encoding):
            return None
        # libsodium's decoding fails exactly when the curve equation has no
        # solution for this y (RFC 8032 5.1.3 step 3); adding the identity
        # runs it without any subgroup check.
        try:
            sodium.crypto_core_ed25519_add(encoding, IDENTITY)
        except nacl.exceptions.RuntimeError:
            return None
        return encoding

    def add(self, a: bytes, b: bytes) -> bytes:
        return sodium.crypto_core_ed25519_add(a, b)

    def sub(self, a: bytes, b: bytes) -> bytes:
        return sodium.crypto_core_ed25519_sub(a, b)

    def mul(self, scalar: int, encoding: bytes) -> bytes:
        if scalar >> 255:
            return super().mul(scalar, encoding)
        try:
            return sodium.crypto_scalarmult_ed25519_noclamp(scalar.to_bytes(32, "little"), encoding)
        except nacl.exceptions.RuntimeError:
            return super().mul(scalar, encoding)

    def base_mul(self, scalar: int) -> bytes:
        if scalar >> 255:
            return super().base_mul(scalar)
        try:
            return sodium.crypto_scalarmult_ed25519_base_noclamp(scalar.to_bytes(32, "little"))
        except nacl.exceptions.RuntimeError:
            return super().base_mul(scalar)

    def times_cofactor(self, encoding: bytes) -> bytes:
        # Three doublings by complete addition: defined for every curve point.
        for _ in range(3):
            encoding = sodium.crypto_core_ed25519_add(encoding, encoding)
        return encoding

    def decode_times_cofactor(self, encoding: bytes) -> bytes | None:
        # The first doubling decodes the encoding as string_to_point would (after the
        # canonical check), so a separate validation would only repeat its square root.
        if not _is_canonical(encoding):
            return None
        try:
            doubled = sodium.crypto_core_ed25519_add(encoding, encoding)
        except nacl.exceptions.RuntimeError:
            return None
        quadrupled = sodium.crypto_core_ed25519_add(doubled, doubled)
        return sodium.crypto_core_ed25519_add(quadrupled, quadrupled)

    def has_small_order(self, encoding: bytes) -> bool:
        # The list RFC 9381 5.4.5 permits: a set lookup instead of three point additions.
        return encoding in SMALL_ORDER_POINTS


_REFERENCE = _ReferenceGroup()
_FAST = _SodiumGroup()


# -- RFC 9381 ---------------------------------------------------------------------------
def _sha512(*parts: bytes) -> bytes:
    return hashlib.sha512(b"".join(parts)).digest()


def _expand_secret(secret_seed: bytes) -> tuple[int, bytes]:
    """(x, the nonce key): RFC 8032 5.1.5's clamped scalar and the digest's second half."""
    if not isinstance(secret_seed, (bytes, bytearray, memoryview)) or len(secret_seed) != SECRET_SEED_LEN:
        raise VrfError(f"a VRF secret seed is {SECRET_SEED_LEN} bytes (the Ed25519 private seed)")
    digest = _sha512(bytes(secret_seed))
    scalar = bytearray(digest[:32])
    scalar[0] &= 248
    scalar[31] &= 127
    scalar[31] |= 64
    return int.from_bytes(scalar, "little"), digest[32:]


def _encode_to_curve(group: _ReferenceGroup, public_key: bytes, alpha: bytes) -> bytes:
    """ECVRF_encode_to_curve_try_and_increment (5.4.1.1), salt = the public key string."""
    for counter in range(256):
        digest = _sha512(SUITE_STRING, _ENCODE_TO_CURVE_FRONT, public_key, alpha, bytes([counter]), _BACK)
        point = group.decode_times_cofactor(digest[:_PT_LEN])
        if point is not None and point != IDENTITY:
            return point
    # Each try succeeds with probability about 1/2: reaching here has probability 2**-256.
    raise VrfError("encode_to_curve found no point in 256 tries")


def _challenge(*points: bytes) -> int:
    """ECVRF_challenge_generation (5.4.3) over Y, H, Gamma, U, V."""
    return int.from_bytes(_sha512(SUITE_STRING, _CHALLENGE_FRONT, *points, _BACK)[:_C_LEN], "little")


def _decode_proof(group: _ReferenceGroup, pi: bytes) -> tuple[bytes, int, int]:
    """ECVRF_decode_proof (5.4.4): (Gamma, c, s), or VrfError naming what is wrong."""
    if not isinstance(pi, (bytes, bytearray, memoryview)) or len(pi) != PROOF_LEN:
        raise VrfError(f"a VRF proof is {PROOF_LEN} bytes")
    pi = bytes(pi)
    gamma = group.string_to_point(pi[:_PT_LEN])
    if gamma is None:
        raise VrfError("VRF proof's Gamma is not a valid Edwards25519 point encoding")
    c = int.from_bytes(pi[_PT_LEN : _PT_LEN + _C_LEN], "little")
    s = int.from_bytes(pi[_PT_LEN + _C_LEN :], "little")
    if s >= _L:
        raise VrfError("VRF proof's s is not reduced modulo the group order")
    return gamma, c, s


def _gamma_to_hash(group: _ReferenceGroup, gamma: bytes) -> bytes:
    """The proof_to_hash output for a decoded Gamma (5.2 step 4-6)."""
    return _sha512(SUITE_STRING, _PROOF_TO_HASH_FRONT, group.times_cofactor(gamma), _BACK)


def _prove(group: _ReferenceGroup, secret_seed: bytes, alpha: bytes) -> bytes:
    """ECVRF_prove (5.1)."""
    x, nonce_key = _expand_secret(secret_seed)
    public_key = group.base_mul(x)
    h = _encode_to_curve(group, public_key, alpha)
    gamma = group.mul(x, h)
    k = int.from_bytes(_sha512(nonce_key, h), "little") % _L
    c = _challenge(public_key, h, gamma, group.base_mul(k), group.mul(k, h))
    s = (k + c * x) % _L
    return gamma + c.to_bytes(_C_LEN, "little") + s.to_bytes(_Q_LEN, "little")


def _verify(group: _ReferenceGroup, public_key: bytes, pi: bytes, alpha: bytes) -> bytes:
    """ECVRF_verify (5.3) with validate_key = TRUE; beta or VrfError."""
    if not isinstance(public_key, (bytes, bytearray, memoryview)) or len(public_key) != PUBLIC_KEY_LEN:
        raise VrfError(f"a VRF public key is {PUBLIC_KEY_LEN} bytes")
    y = group.string_to_point(bytes(public_key))
    if y is None:
        raise VrfError("VRF public key is not a valid Edwards25519 point encoding")
    if group.has_small_order(y):  # ECVRF_validate_key (5.4.5)
        raise VrfError("VRF public key has small order")
    gamma, c, s = _decode_proof(group, pi)
    h = _encode_to_curve(group, y, alpha)
    u = group.sub(group.base_mul(s), group.mul(c, y))
    v = group.sub(group.mul(s, h), group.mul(c, gamma))
    if _challenge(y, h, gamma, u, v) != c:
        raise VrfError("VRF proof does not verify for this public key and input")
    return _gamma_to_hash(group, gamma)


def _as_alpha(alpha: bytes) -> bytes:
    if not isinstance(alpha, (bytes, bytearray, memoryview)):
        raise VrfError("a VRF input (alpha) is a byte string")
    return bytes(alpha)


def prove(secret_seed: bytes, alpha: bytes) -> bytes:
    """The 80-byte proof pi of ``alpha`` under the Ed25519 key with this 32-byte seed.

    Deterministic: one key and one input have exactly one proof.
    """
    return _prove(_FAST, secret_seed, _as_alpha(alpha))


def verify(public_key: bytes, pi: bytes, alpha: bytes) -> bytes:
    """The 64-byte output beta if ``pi`` proves ``alpha`` under ``public_key``; else VrfError.

    Every node checks one proof per block, and a block's proof is checked
    again on commit, on sync and by each node of a simulation: the results of
    recent successful checks are remembered (a failed check is always redone).
    """
    if not isinstance(pi, (bytes, bytearray, memoryview)):
        raise VrfError(f"a VRF proof is {PROOF_LEN} bytes")
    if not isinstance(public_key, (bytes, bytearray, memoryview)):
        raise VrfError(f"a VRF public key is {PUBLIC_KEY_LEN} bytes")
    return _verify_cached(bytes(public_key), bytes(pi), _as_alpha(alpha))


@lru_cache(maxsize=4096)
def _verify_cached(public_key: bytes, pi: bytes, alpha: bytes) -> bytes:
    return _verify(_FAST, public_key, pi, alpha)


def proof_to_hash(pi: bytes) -> bytes:
    """The 64-byte output beta of a proof, without verifying it (RFC 9381 5.2).

    Only meaningful for a proof that was verified (or made here): anyone can
    write a well-formed pi for any Gamma. VrfError if pi is malformed.
    """
    if not isinstance(pi, (bytes, bytearray, memoryview)):
        raise VrfError(f"a VRF proof is {PROOF_LEN} bytes")
    return _proof_to_hash_cached(bytes(pi))


@lru_cache(maxsize=4096)
def _proof_to_hash_cached(pi: bytes) -> bytes:
    gamma, _c, _s = _decode_proof(_FAST, pi)
    return _gamma_to_hash(_FAST, gamma)
