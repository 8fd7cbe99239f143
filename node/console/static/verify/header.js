// Block headers, validator sets and commit seals, as node/consensus/block.py (BlockHeader.from_value,
// seal_message, verify_seals) and node/consensus/validators.py (docs/blocks.md).

import { CborError, bytesEqual, decode, encode, hasExactKeys, intIn, isMap, toHex } from "./cbor.js";
import { hashTagged, verifySignature } from "./crypto.js";

export const BLOCK_TAG = "metanode/block/v1";
export const SEAL_TAG = "metanode/seal/v1";
export const VALIDATORS_TAG = "metanode/validators/v1";
export const MAX_HEADER_SIZE = 4 * 1024;
const MAX_UINT63 = (1n << 63n) - 1n;
const MAX_ROUND = 2 ** 32 - 1;

// name -> ["int", low, high] | ["bytes", size] | ["text", low, high] (block.py _HEADER_FIELDS, in its order)
const HEADER_FIELDS = {
  chain_id: ["text", 1, 64],
  genesis_hash: ["bytes", 32],
  height: ["int", 0, MAX_UINT63],
  parent_hash: ["bytes", 32],
  timestamp_ms: ["int", 0, MAX_UINT63],
  proposer: ["bytes", 32],
  round: ["int", 0, MAX_ROUND],
  tx_root: ["bytes", 32],
  tx_count: ["int", 0, MAX_UINT63],
  receipts_size: ["int", 0, MAX_UINT63],
  receipts_root: ["bytes", 32],
  validators_hash: ["bytes", 32],
  next_validators_hash: ["bytes", 32],
  seed_proof: ["bytes", 80],
};

export class HeaderError extends Error {}

/** Decode header bytes (canonical CBOR, every field of its type and range, no other). Returns a plain object
 * with the fields plus `hash` (the block hash: hash_tagged("metanode/block/v1", the bytes)). */
export async function decodeHeader(bytes) {
  let value;
  try {
    value = decode(bytes, { maxSize: MAX_HEADER_SIZE });
  } catch (error) {
    if (error instanceof CborError) throw new HeaderError(error.message);
    throw error;
  }
  if (!isMap(value)) throw new HeaderError("header: expected a map");
  if (!hasExactKeys(value, Object.keys(HEADER_FIELDS))) throw new HeaderError("header: missing or unknown fields");
  const header = {};
  for (const [name, [kind, low, high]] of Object.entries(HEADER_FIELDS)) {
    const field = value.get(name);
    if (kind === "int" && !intIn(field, low, high)) throw new HeaderError(`header.${name}: expected an integer in [${low}, ${high}]`);
    if (kind === "bytes" && !(field instanceof Uint8Array && field.length === low)) throw new HeaderError(`header.${name}: expected ${low} bytes`);
    if (kind === "text" && !(typeof field === "string" && [...field].length >= low && [...field].length <= high)) {
      throw new HeaderError(`header.${name}: expected a string of ${low}-${high} characters`);
    }
    header[name] = field;
  }
  header.hash = await hashTagged(BLOCK_TAG, bytes);
  return header;
}

/** A validator set: sorted distinct keys, its hash (validators_hash) and quorum ceil(2n/3). */
export async function validatorSet(keys) {
  return {
    keys,
    hash: await hashTagged(VALIDATORS_TAG, encode(keys)),
    quorum: Math.floor((2 * keys.length - 1) / 3) + 1,
    has(key) {
      return keys.some((k) => bytesEqual(k, key));
    },
    equals(other) {
      return other.keys.length === keys.length && keys.every((k, i) => bytesEqual(k, other.keys[i]));
    },
  };
}

/** seal_message: canonical CBOR {"block": header hash, "round": commit round}. */
export function sealMessage(headerHash, commitRound) {
  return encode(new Map([["block", headerHash], ["round", commitRound]]));
}

/** verify_seals: null when at least a quorum of the set's validators sealed this header in commitRound,
 * else why not (the first failing seal in order). */
export async function sealFailure(header, commitRound, seals, vset) {
  if (commitRound < header.round) return `block.commit_round: ${commitRound} is before the block's round ${header.round}`;
  const message = sealMessage(header.hash, commitRound);
  let valid = 0;
  for (const [key, signature] of seals) {
    if (!vset.has(key)) return `block.seals: ${toHex(key).slice(0, 16)}... is not a validator`;
    if (!(await verifySignature(key, SEAL_TAG, message, signature))) return `block.seals: bad seal from ${toHex(key).slice(0, 16)}...`;
    valid += 1;
  }
  if (valid < vset.quorum) return `block.seals: ${valid} seals, a quorum is ${vset.quorum}`;
  return null;
}

/** Every seal is a good signature of this header and round, whoever made it. */
export async function signedByItsSealers(header, commitRound, seals) {
  if (!seals.length) return false;
  const message = sealMessage(header.hash, commitRound);
  for (const [key, signature] of seals) {
    if (!(await verifySignature(key, SEAL_TAG, message, signature))) return false;
  }
  return true;
}
