// SHA-256 and Ed25519 with the browser's Web Crypto (docs/encoding.md sections 2 and 4).
//
// metanode verifies signatures with libsodium's crypto_sign_open (through PyNaCl), which is stricter than
// RFC 8032 and than BoringSSL's Ed25519 (Chromium's Web Crypto): it also refuses a public key or an R that
// is one of the small-order points, and a public key whose encoding is not canonical (y >= p). Those checks
// are on the bytes, so they are done here before asking crypto.subtle; S < L is checked here too (both
// libraries refuse a non-canonical S). With them, the browser accepts exactly the signatures metanode does.

const encoder = new TextEncoder();

/** SHA-256 of bytes (Uint8Array of 32). */
export async function sha256(data) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", data));
}

/** Concatenate Uint8Arrays. */
export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((total, part) => total + part.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** ASCII(tag) || 0x00 || data: the preimage of a tagged hash and the message of a signature. */
export function tagged(tag, data) {
  return concat(encoder.encode(tag), new Uint8Array([0]), data);
}

/** hash_tagged(tag, data) = SHA-256(ASCII(tag) || 0x00 || data). */
export async function hashTagged(tag, data) {
  return sha256(tagged(tag, data));
}

// libsodium's ge25519_has_small_order blacklist (compared with the sign bit of the last byte cleared).
const SMALL_ORDER = [
  "0000000000000000000000000000000000000000000000000000000000000000",
  "0100000000000000000000000000000000000000000000000000000000000000",
  "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
  "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
  "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
  "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
  "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
].map((hex) => Uint8Array.from(hex.match(/../g), (pair) => parseInt(pair, 16)));

const GROUP_ORDER = (1n << 252n) + 27742317777372353535851937790883648493n;

export function hasSmallOrder(point) {
  return SMALL_ORDER.some((bad) => {
    for (let i = 0; i < 31; i++) if (point[i] !== bad[i]) return false;
    return (point[31] & 0x7f) === bad[31];
  });
}

/** ge25519_is_canonical: the encoded y (sign bit cleared) is below p = 2^255 - 19. */
export function isCanonicalPoint(point) {
  if ((point[31] & 0x7f) !== 0x7f) return true;
  for (let i = 30; i > 0; i--) if (point[i] !== 0xff) return true;
  return point[0] < 0xed;
}

function littleEndian(bytes) {
  let n = 0n;
  for (let i = bytes.length - 1; i >= 0; i--) n = (n << 8n) | BigInt(bytes[i]);
  return n;
}

// Verified (key, signature, message digest) outcomes: bundles of one chain repeat the same seals, and a page
// verifying a job's receipts (or a test flipping every byte of a bundle) should pay for each seal once.
const MEMO_LIMIT = 8192;
const memo = new Map();

async function subtleVerify(publicKey, signature, message) {
  try {
    const key = await crypto.subtle.importKey("raw", publicKey, { name: "Ed25519" }, false, ["verify"]);
    return await crypto.subtle.verify({ name: "Ed25519" }, key, signature, message);
  } catch {
    return false; // not a point, or a key Web Crypto refuses: not a valid signature either way
  }
}

/** keys.verify: whether `signature` is `publicKey`'s signature of tagged(tag, message). */
export async function verifySignature(publicKey, tag, message, signature) {
  if (!(publicKey instanceof Uint8Array) || !(signature instanceof Uint8Array)) return false;
  if (publicKey.length !== 32 || signature.length !== 64) return false;
  const R = signature.subarray(0, 32);
  if (littleEndian(signature.subarray(32)) >= GROUP_ORDER) return false;
  if (hasSmallOrder(R) || hasSmallOrder(publicKey) || !isCanonicalPoint(publicKey)) return false;
  const signed = tagged(tag, message);
  const id = toKey(publicKey) + toKey(signature) + toKey(await sha256(signed));
  const known = memo.get(id);
  if (known !== undefined) return known;
  const valid = await subtleVerify(publicKey, signature, signed);
  if (memo.size >= MEMO_LIMIT) memo.clear();
  memo.set(id, valid);
  return valid;
}

function toKey(bytes) {
  return String.fromCharCode(...bytes);
}
