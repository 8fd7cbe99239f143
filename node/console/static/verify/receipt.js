// Receipt envelopes and their body schemas, as node/receipts/envelope.py verify_receipt and
// node/receipts/schema.py check_body (docs/receipts.md "Checking an envelope").
//
// An envelope is canonical CBOR {"sig": bytes(64), "body": bytes}; body is the canonical CBOR of a flat map
// (common fields plus the kind's), signed by issuer.key under tag "metanode/receipt/v1"; the receipt id is
// hash_tagged("metanode/receipt/v1", envelope).

import { CborError, decode, hasExactKeys, intIn, isMap } from "./cbor.js";
import { hashTagged, verifySignature } from "./crypto.js";

export const RECEIPT_TAG = "metanode/receipt/v1";
export const MAX_ENVELOPE_SIZE = 16 * 1024;
const MAX_UINT = (1n << 63n) - 1n;
const MAX_LIST = 64;

/** A failed receipt check: `reason` is node/base/verification.py's Reason value. */
export class ReceiptFailure extends Error {
  constructor(reason, detail) {
    super(`${reason}: ${detail}`);
    this.reason = reason;
    this.detail = detail;
  }
}

// -- base58btc peer ids (docs/encoding.md section 3) --------------------------------------------------------
const ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
const PEER_ID_PREFIX = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
// What Python's str.rstrip() strips (str.isspace()): base58.b58decode strips trailing whitespace first.
const PY_TRAILING_SPACE = /[\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$/u;

export function base58Encode(bytes) {
  let zeros = 0;
  while (zeros < bytes.length && bytes[zeros] === 0) zeros++;
  let n = 0n;
  for (const byte of bytes) n = (n << 8n) | BigInt(byte);
  let digits = "";
  while (n > 0n) {
    digits = ALPHABET[Number(n % 58n)] + digits;
    n /= 58n;
  }
  return "1".repeat(zeros) + digits;
}

/** base58.b58decode as the Python package does it (trailing whitespace stripped); null if not base58. */
function base58Decode(text) {
  const stripped = text.replace(PY_TRAILING_SPACE, "");
  let ones = 0;
  while (ones < stripped.length && stripped[ones] === "1") ones++;
  let n = 0n;
  for (const char of stripped.slice(ones)) {
    const digit = ALPHABET.indexOf(char);
    if (digit < 0) return null;
    n = n * 58n + BigInt(digit);
  }
  const out = [];
  while (n > 0n) {
    out.unshift(Number(n & 0xffn));
    n >>= 8n;
  }
  return [...new Array(ones).fill(0), ...out];
}

/** The libp2p peer id of an Ed25519 public key. */
export function peerIdOf(publicKey) {
  return base58Encode(Uint8Array.from([...PEER_ID_PREFIX, ...publicKey]));
}

function isPeerId(text) {
  const raw = base58Decode(text);
  return raw !== null && raw.length === 38 && PEER_ID_PREFIX.every((byte, i) => raw[i] === byte);
}

// -- schema checks (each throws ReceiptFailure("schema", ...) naming the field) ----------------------------------
const fail = (path, message) => new ReceiptFailure("schema", `${path}: ${message}`);
const pyLength = (text) => [...text].length;

const digest = (value, path) => {
  if (!(value instanceof Uint8Array) || value.length !== 32) throw fail(path, "must be 32 bytes");
};
const optional = (check) => (value, path) => {
  if (value !== null) check(value, path);
};
const integer = (low, high) => (value, path) => {
  if (!intIn(value, low, high)) throw fail(path, `must be an integer in [${low}, ${high}]`);
};
const choice = (...options) => (value, path) => {
  if (typeof value !== "string" || !options.includes(value)) throw fail(path, `must be one of ${options.join(", ")}`);
};
const pattern = (regex, what) => (value, path) => {
  if (typeof value !== "string" || !regex.test(value)) throw fail(path, `must be ${what}`);
};
const peerId = (value, path) => {
  if (typeof value !== "string") throw fail(path, "must be a peer id string");
  if (pyLength(value) > 64 || !isPeerId(value)) throw fail(path, "is not an Ed25519 peer id");
};
const record = (fields) => (value, path) => checkFields(value, fields, path);
const mayBeAbsent = (check) => Object.assign((value, path) => check(value, path), { mayBeAbsent: true });
const listOf = (item, low, high, uniqueKey = null) => (value, path) => {
  if (!Array.isArray(value)) throw fail(path, "must be a list");
  if (value.length < low || value.length > high) throw fail(path, `must have ${low} to ${high} items`);
  const seen = new Set();
  value.forEach((entry, i) => {
    item(entry, `${path}[${i}]`);
    const key = uniqueKey ? entry.get(uniqueKey) : entry;
    if (seen.has(key)) throw fail(`${path}[${i}]`, "repeats an earlier item");
    seen.add(key);
  });
};

const join = (path, name) => (path ? `${path}.${name}` : name);

function checkFields(value, fields, path) {
  if (!isMap(value)) throw fail(path || "body", "must be a map");
  for (const [name, check] of Object.entries(fields)) {
    if (!value.has(name)) {
      if (check.mayBeAbsent) continue;
      throw fail(join(path, name), "is missing");
    }
    check(value.get(name), join(path, name));
  }
  for (const name of value.keys()) {
    if (!Object.hasOwn(fields, name)) throw fail(join(path, name), "is not a field of this map");
  }
}

const uint = integer(0n, MAX_UINT);

const COMMON_FIELDS = {
  version: integer(1, 1),
  kind: pattern(/^[a-z]+\.[a-z]+$/, "a receipt kind"),
  issuer: record({ node: peerId, key: digest }),
  height: uint,
  subject: digest,
  prev: optional(digest),
};

const KIND_FIELDS = {
  "api.call": {
    method: pattern(/^[a-z][a-z0-9]*_[a-z][a-z0-9_]{0,62}$/, "a namespace_method name"),
    tenant: digest,
    outcome: choice("accepted", "rejected", "failed"),
    code: integer(-(2 ** 31), 2 ** 31 - 1),
    response: digest,
  },
  "data.store": {
    content: choice("dataset", "result"),
    tenant: digest,
    size: uint,
    replicas: integer(1, 255),
    skipped_rows: mayBeAbsent(integer(1n, MAX_UINT)),
  },
  "job.schedule": { block: digest, assignees: listOf(peerId, 1, MAX_LIST), seed: digest, deadline: uint },
  "job.exec": {
    input_root: digest, code: digest, policy: digest, seed: digest, result: digest, witness: digest,
    exit: integer(-255, 255),
  },
  "job.verdict": {
    verdict: choice("verified", "disputed"),
    results: listOf(record({ node: peerId, result: digest }), 1, MAX_LIST, "node"),
  },
};

function checkVerdict(body) {
  const distinct = new Set(body.get("results").map((entry) => hexKey(entry.get("result"))));
  if (body.get("verdict") === "verified" && distinct.size !== 1) throw fail("verdict", "is verified but the result digests differ");
  if (body.get("verdict") === "disputed" && distinct.size === 1) throw fail("verdict", "is disputed but every result digest is equal");
}

const hexKey = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");

/** schema.check_body: the body's version, kind and every field of the kind. */
export function checkBody(body) {
  if (!isMap(body)) throw fail("body", "must be a map");
  const version = body.get("version");
  if (version !== 1) throw new ReceiptFailure("unsupported-version", `version: ${String(version)} is not supported (expected 1)`);
  const kind = body.get("kind");
  if (typeof kind !== "string" || !Object.hasOwn(KIND_FIELDS, kind)) {
    throw new ReceiptFailure("unknown-kind", `kind: ${String(kind)} is not one of ${Object.keys(KIND_FIELDS).join(", ")}`);
  }
  checkFields(body, { ...COMMON_FIELDS, ...KIND_FIELDS[kind] }, "");
  if (kind === "job.verdict") checkVerdict(body);
}

function decodeCanonical(data, what) {
  try {
    return decode(data);
  } catch (error) {
    if (!(error instanceof CborError)) throw error;
    const reason = error.message.startsWith("malformed") ? "malformed" : "non-canonical";
    throw new ReceiptFailure(reason, `${what}: ${error.message}`);
  }
}

/** envelope.verify_receipt: decode and check an envelope, signature included.
 * Returns {id, body (a Map), bodyBytes, signature}; throws ReceiptFailure. */
export async function verifyReceipt(envelope) {
  if (envelope.length > MAX_ENVELOPE_SIZE) {
    throw new ReceiptFailure("too-large", `envelope of ${envelope.length} bytes exceeds ${MAX_ENVELOPE_SIZE}`);
  }
  const outer = decodeCanonical(envelope, "envelope");
  if (!hasExactKeys(outer, ["sig", "body"])) throw new ReceiptFailure("bad-envelope", "envelope must be a map of exactly 'sig' and 'body'");
  const signature = outer.get("sig");
  const bodyBytes = outer.get("body");
  if (!(signature instanceof Uint8Array) || signature.length !== 64) throw new ReceiptFailure("bad-envelope", "sig must be 64 bytes");
  if (!(bodyBytes instanceof Uint8Array)) throw new ReceiptFailure("bad-envelope", "body must be a byte string");
  const body = decodeCanonical(bodyBytes, "body");
  checkBody(body);
  const issuer = body.get("issuer");
  if (peerIdOf(issuer.get("key")) !== issuer.get("node")) {
    throw new ReceiptFailure("issuer-mismatch", "issuer.node is not the peer id of issuer.key");
  }
  if (!(await verifySignature(issuer.get("key"), RECEIPT_TAG, bodyBytes, signature))) {
    throw new ReceiptFailure("bad-signature", "signature is not the issuer's over the body");
  }
  return { id: await hashTagged(RECEIPT_TAG, envelope), body, bodyBytes, signature };
}
