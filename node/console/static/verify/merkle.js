// RFC 9162 Merkle inclusion proofs, as node/base/merkle.py verify_inclusion (docs/receipts.md).
// leaf = SHA-256(0x00 || data), node = SHA-256(0x01 || left || right).

import { bytesEqual } from "./cbor.js";
import { concat, sha256 } from "./crypto.js";

export const MAX_PROOF_HASHES = 128;
const MAX_TREE_SIZE = (1n << 64n) - 1n;

export async function leafHash(data) {
  return sha256(concat(new Uint8Array([0]), data));
}

export async function nodeHash(left, right) {
  return sha256(concat(new Uint8Array([1]), left, right));
}

/** Check that `leaf` (a leaf hash) is leaf `index` of the tree of `size` leaves with root `root`.
 * Returns null when it is, else {reason: "proof-malformed" | "proof-mismatch", detail}. */
export async function verifyInclusion(leaf, index, size, proof, root) {
  const malformed = (detail) => ({ reason: "proof-malformed", detail });
  let fn = BigInt(index);
  let sn = BigInt(size);
  if (fn < 0n || fn > MAX_TREE_SIZE || sn < 0n || sn > MAX_TREE_SIZE) return malformed("sizes must be in [0, 2**64)");
  if (!Array.isArray(proof) || proof.length > MAX_PROOF_HASHES) return malformed("proof must be a list of at most 128 hashes");
  if (proof.some((p) => !(p instanceof Uint8Array) || p.length !== 32)) return malformed("proof hashes must be 32 bytes");
  if (fn >= sn) return malformed(`leaf index ${fn} is not below tree size ${sn}`);
  sn -= 1n;
  let r = leaf;
  for (const p of proof) {
    if (sn === 0n) return malformed("inclusion proof is longer than the tree is deep");
    if (fn & 1n || fn === sn) {
      r = await nodeHash(p, r);
      if (!(fn & 1n)) {
        while (fn && !(fn & 1n)) {
          fn >>= 1n;
          sn >>= 1n;
        }
      }
    } else {
      r = await nodeHash(r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) return malformed("inclusion proof is shorter than the tree is deep");
  if (!bytesEqual(r, root)) return { reason: "proof-mismatch", detail: "inclusion proof does not lead to the root" };
  return null;
}
