// The in-browser receipt bundle verifier: node/receipts/verify.py BundleVerifier in JavaScript, checked against
// it by tests/console/test_browser_verifier.py. docs/bundles.md is the spec; README.md next to this file maps
// each step to it. No server calls: only the bundle bytes, the trusted genesis's canonical CBOR and Web Crypto.
//
//   verifyBundle(bundleBytes, genesisCbor, {issuers}) ->
//     {ok: true, receipt, receiptId, kind, issuer, leafIndex, height, blockHash, chainId, genesisHash, validators,
//      witness}
//   | {ok: false, part, exitCode, detail}
//
// `part` and `exitCode` are exactly the Python verifier's for the same bundle and genesis (the first failing
// check decides, in the same order); a genesis that is not a valid genesis's canonical CBOR is part "genesis",
// exit 2 (metanode receipt verify's usage error for an unreadable genesis file).

import { CborError, bytesEqual, decode, hasExactKeys, intIn, isMap, toHex } from "./cbor.js";
import { hashTagged } from "./crypto.js";
import { GenesisError, parseGenesis } from "./genesis.js";
import { HeaderError, MAX_HEADER_SIZE, decodeHeader, sealFailure, signedByItsSealers, validatorSet } from "./header.js";
import { MAX_PROOF_HASHES, leafHash, verifyInclusion } from "./merkle.js";
import { MAX_ENVELOPE_SIZE, ReceiptFailure, verifyReceipt } from "./receipt.js";

export const MAX_BUNDLE_SIZE = 8 * 1024 * 1024;
export const BUNDLE_TAG = "metanode/receipt-bundle/v1";
const WITNESS_TAG = "metanode/cage/witness/v1";
const MAX_WITNESS_FILE = 64 * 1024 * 1024;
const MAX_SEALS = 256;
const MAX_VALIDATOR_SETS = 1024;
const MAX_UINT63 = (1n << 63n) - 1n;

/** node/receipts/verify.py EXIT_CODES (node/base/errors.py). */
export const EXIT_CODES = Object.freeze({
  bundle: 10, receipt: 11, proof: 12, header: 13, chain: 14, replay: 15, witness: 16, issuer: 17, genesis: 2,
});

const FIELDS = ["version", "receipt", "leaf_index", "proof", "header", "commit_round", "seals", "validator_sets", "witness"];
const GENESIS_FIELDS = ["from_height", "genesis", "validators"];
const TRANSITION_FIELDS = ["from_height", "validators", "header", "commit_round", "seals"];

class Invalid extends Error {
  constructor(part, detail) {
    super(`${part}: ${detail}`);
    this.part = part;
    this.detail = detail;
  }
}

// -- strict decoding (node/receipts/bundle.py decode_bundle) ----------------------------------------------------
function uint(value, part, name) {
  if (!intIn(value, 0, MAX_UINT63)) throw new Invalid(part, `${name} must be an integer in [0, 2**63)`);
  return value;
}

function exactBytes(value, size, part, name) {
  if (!(value instanceof Uint8Array) || value.length !== size) throw new Invalid(part, `${name} must be ${size} bytes`);
  return value;
}

function byteString(value, limit, part, name) {
  if (!(value instanceof Uint8Array) || !value.length) throw new Invalid(part, `${name} must be a non-empty byte string`);
  if (value.length > limit) throw new Invalid(part, `${name} of ${value.length} bytes exceeds ${limit}`);
  return value;
}

function list(value, limit, part, name) {
  if (!Array.isArray(value)) throw new Invalid(part, `${name} must be a list`);
  if (value.length > limit) throw new Invalid(part, `${name} has ${value.length} items, more than ${limit}`);
  return value;
}

function strictlyIncreasing(keys) {
  return keys.every((key, i) => i === 0 || toHex(keys[i - 1]) < toHex(key));
}

function sealList(value, part, name) {
  const seals = list(value, MAX_SEALS, part, name).map((seal, i) => {
    if (!Array.isArray(seal) || seal.length !== 2) throw new Invalid(part, `${name}[${i}] must be [key, signature]`);
    return [exactBytes(seal[0], 32, part, `${name}[${i}] key`), exactBytes(seal[1], 64, part, `${name}[${i}] signature`)];
  });
  if (!strictlyIncreasing(seals.map(([key]) => key))) throw new Invalid(part, `${name} must be sorted by key, one per validator`);
  return seals;
}

function keyList(value, where) {
  const keys = list(value, MAX_SEALS, "chain", `${where}.validators`).map((key, j) => exactBytes(key, 32, "chain", `${where}.validators[${j}]`));
  if (!keys.length || !strictlyIncreasing(keys)) throw new Invalid("chain", `${where}.validators must be non-empty, sorted and distinct`);
  return keys;
}

function validatorSets(value) {
  const items = list(value, MAX_VALIDATOR_SETS, "chain", "validator_sets");
  if (!items.length) throw new Invalid("chain", "validator_sets is empty");
  return items.map((item, i) => {
    const where = `validator_sets[${i}]`;
    const fields = i === 0 ? GENESIS_FIELDS : TRANSITION_FIELDS;
    if (!hasExactKeys(item, fields)) {
      throw new Invalid("chain", `${where} must be ${i === 0 ? "the genesis set" : "a transition"}: a map of ${[...fields].sort().join(", ")}`);
    }
    const fromHeight = uint(item.get("from_height"), "chain", `${where}.from_height`);
    const validators = keyList(item.get("validators"), where);
    if (i === 0) return { fromHeight, validators, genesis: exactBytes(item.get("genesis"), 32, "chain", `${where}.genesis`) };
    return {
      fromHeight,
      validators,
      header: byteString(item.get("header"), MAX_HEADER_SIZE, "chain", `${where}.header`),
      commitRound: uint(item.get("commit_round"), "chain", `${where}.commit_round`),
      seals: sealList(item.get("seals"), "chain", `${where}.seals`),
    };
  });
}

/** decode_bundle: structure, version and every field's type and size (nothing verified yet). */
export function decodeBundle(data) {
  let value;
  try {
    value = decode(data, { maxSize: MAX_BUNDLE_SIZE });
  } catch (error) {
    if (error instanceof CborError) throw new Invalid("bundle", `not a canonical CBOR bundle: ${error.message}`);
    throw error;
  }
  if (!isMap(value) || !value.has("version")) throw new Invalid("bundle", `expected a map of ${[...FIELDS].sort().join(", ")}`);
  const version = value.get("version");
  if (version === 1) {
    throw new Invalid("bundle", "version 1 bundles are no longer supported (expected 2): they carry headers of the format before "
      + "validator set changes; fetch the bundle again from an upgraded node");
  }
  if (version !== 2) throw new Invalid("bundle", `version ${String(version)} is not supported (expected 2)`);
  if (!hasExactKeys(value, FIELDS)) throw new Invalid("bundle", `expected a map of ${[...FIELDS].sort().join(", ")}`);
  let witness = value.get("witness");
  if (witness !== null) witness = byteString(witness, MAX_BUNDLE_SIZE, "witness", "witness");
  const proof = list(value.get("proof"), MAX_PROOF_HASHES, "proof", "proof");
  return {
    receipt: byteString(value.get("receipt"), MAX_ENVELOPE_SIZE, "receipt", "receipt"),
    leafIndex: uint(value.get("leaf_index"), "proof", "leaf_index"),
    proof: proof.map((p, i) => exactBytes(p, 32, "proof", `proof[${i}]`)),
    header: byteString(value.get("header"), MAX_HEADER_SIZE, "header", "header"),
    commitRound: uint(value.get("commit_round"), "header", "commit_round"),
    seals: sealList(value.get("seals"), "header", "seals"),
    validatorSets: validatorSets(value.get("validator_sets")),
    witness,
  };
}

// -- the validator set chain (BundleVerifier.validator_chain) --------------------------------------------------
async function validatorChain(links, genesis) {
  const [entry, ...transitions] = links;
  if (!bytesEqual(entry.genesis, genesis.hash)) {
    throw new Invalid("chain", `the bundle is for genesis ${toHex(entry.genesis)}, not the given genesis ${toHex(genesis.hash)}`);
  }
  if (entry.fromHeight !== 0) throw new Invalid("chain", `the first validator set starts at height ${entry.fromHeight}, not 0`);
  const genesisSet = await validatorSet(genesis.validators);
  if (!genesisSet.equals({ keys: entry.validators })) throw new Invalid("chain", "the bundle's validator set is not the genesis file's");
  const chain = [{ fromHeight: 0, validators: genesisSet }];
  for (const [offset, link] of transitions.entries()) {
    chain.push({ fromHeight: link.fromHeight, validators: await checkTransition(offset + 1, chain[chain.length - 1], link, genesis) });
  }
  return chain;
}

async function checkTransition(i, previous, link, genesis) {
  const where = `validator_sets[${i}]`;
  if (link.fromHeight <= previous.fromHeight) {
    throw new Invalid("chain", `${where} starts at height ${link.fromHeight}, not after validator_sets[${i - 1}] `
      + `(height ${previous.fromHeight}): transitions must be in increasing height order`);
  }
  if (link.fromHeight < 2) throw new Invalid("chain", `${where} starts at height ${link.fromHeight}; a change starts at 2 or later`);
  const fresh = await validatorSet(link.validators);
  if (fresh.equals(previous.validators)) throw new Invalid("chain", `${where} is the same set as validator_sets[${i - 1}]: not a change`);
  let header;
  try {
    header = await decodeHeader(link.header);
  } catch (error) {
    if (error instanceof HeaderError) throw new Invalid("chain", `${where}.header is malformed: ${error.message}`);
    throw error;
  }
  const proof = `${where} (from height ${link.fromHeight}): header ${header.height}`;
  if (BigInt(header.height) !== BigInt(link.fromHeight) - 1n) {
    throw new Invalid("chain", `${proof} is not of height ${BigInt(link.fromHeight) - 1n}, the block before the change`);
  }
  if (header.chain_id !== genesis.chainId) throw new Invalid("chain", `${proof} is from chain '${header.chain_id}', not '${genesis.chainId}'`);
  if (!bytesEqual(header.genesis_hash, genesis.hash)) {
    throw new Invalid("chain", `${proof} is sealed on genesis ${toHex(header.genesis_hash)}, not the given genesis ${toHex(genesis.hash)}`);
  }
  if (!bytesEqual(header.validators_hash, previous.validators.hash)) {
    throw new Invalid("chain", `${proof} was decided by another set than validator_sets[${i - 1}] (a transition is missing or out of order)`);
  }
  if (!bytesEqual(header.next_validators_hash, fresh.hash)) {
    throw new Invalid("chain", `${proof} commits to next validator set ${toHex(header.next_validators_hash)}, not ${where}'s ${toHex(fresh.hash)}`);
  }
  const failure = await sealFailure(header, link.commitRound, link.seals, previous.validators);
  if (failure !== null) throw new Invalid("chain", `${proof} is not sealed by a quorum of validator_sets[${i - 1}]: ${failure}`);
  return fresh;
}

// -- the sealing header (BundleVerifier._check_header / _verify_header) ----------------------------------------
function unreachedSet(header) {
  return `header ${header.height} was decided by validator set ${toHex(header.validators_hash)}, which the bundle's `
    + "validator set chain does not end with (a transition is missing, or one is after the sealing height)";
}

async function checkHeader(bundle, last, genesis) {
  const validators = last.validators;
  let header;
  try {
    header = await decodeHeader(bundle.header);
  } catch (error) {
    if (error instanceof HeaderError) throw new Invalid("header", `malformed header: ${error.message}`);
    throw error;
  }
  const failure = await sealFailure(header, bundle.commitRound, bundle.seals, validators);
  if (failure !== null) {
    if (!bytesEqual(header.validators_hash, validators.hash) && (await signedByItsSealers(header, bundle.commitRound, bundle.seals))) {
      throw new Invalid("chain", unreachedSet(header));
    }
    throw new Invalid("header", `header ${header.height} is not sealed by a quorum: ${failure}`);
  }
  if (header.chain_id !== genesis.chainId) throw new Invalid("chain", `header is from chain '${header.chain_id}', not '${genesis.chainId}'`);
  if (!bytesEqual(header.genesis_hash, genesis.hash)) {
    throw new Invalid("chain", `header ${header.height} is sealed on genesis ${toHex(header.genesis_hash)}, not the given genesis ${toHex(genesis.hash)}`);
  }
  if (!bytesEqual(header.validators_hash, validators.hash)) throw new Invalid("chain", unreachedSet(header));
  if (header.height < last.fromHeight) {
    throw new Invalid("chain", `the bundle carries a transition at height ${last.fromHeight}, after the sealing height ${header.height}`);
  }
  return header;
}

// -- the witness (verify.py check_witness, execution.py witness_mismatches) --------------------------------------
const NO_DIGEST = new Uint8Array(32);
const digestOrNone = (value) => (value instanceof Uint8Array && value.length === 32 ? value : NO_DIGEST);

function exitCodeOf(exit) {
  if (exit.get("status") === "ok") return 0;
  const signal = exit.has("signal") ? exit.get("signal") : null;
  return intIn(signal, 1, 255) ? -Number(signal) : 1;
}

async function checkWitness(receipt, recordBytes) {
  const kind = receipt.body.get("kind");
  if (kind !== "job.exec") throw new Invalid("witness", `a witness belongs to a job.exec receipt, not ${kind}`);
  let record;
  try {
    record = decode(recordBytes, { maxSize: MAX_WITNESS_FILE });
  } catch (error) {
    if (error instanceof CborError) throw new Invalid("witness", `not a witness record: ${error.message}`);
    throw error;
  }
  // Python compares `record.get("version") != 1`, which True passes (True == 1).
  if (!isMap(record) || !(record.get("version") === 1 || record.get("version") === true)) {
    throw new Invalid("witness", "not a witness record of a supported version");
  }
  const code = record.get("code");
  const exit = record.get("exit");
  if (!["inputs_root", "seed", "result_digest"].every((key) => record.has(key))
      || !isMap(code) || !code.has("job") || !code.has("policy") || !isMap(exit) || !exit.has("status")) {
    throw new Invalid("witness", "witness record lacks the fields of a cage run");
  }
  const expected = {
    input_root: record.get("inputs_root"),
    code: code.get("job"),
    policy: code.get("policy"),
    seed: digestOrNone(record.has("job_seed") ? record.get("job_seed") : record.get("seed")),
    result: digestOrNone(record.get("result_digest")),
    witness: await hashTagged(WITNESS_TAG, recordBytes),
    exit: exitCodeOf(exit),
  };
  const mismatched = Object.entries(expected).filter(([name, value]) => {
    const mine = receipt.body.get(name);
    return typeof value === "number" ? mine !== value : !bytesEqual(mine, value);
  }).map(([name]) => name);
  if (mismatched.length) throw new Invalid("witness", `witness disagrees with the receipt on ${mismatched.join(", ")}`);
  return record;
}

// -- the whole check ----------------------------------------------------------------------------------------------
/** A decoded receipt body as plain JSON-able data: byte strings as lowercase hex, integers beyond 2^53 as
 * decimal strings, maps as objects. */
export function plain(value) {
  if (value instanceof Uint8Array) return toHex(value);
  if (typeof value === "bigint") return value.toString();
  if (Array.isArray(value)) return value.map(plain);
  if (value instanceof Map) return Object.fromEntries([...value.entries()].map(([key, item]) => [key, plain(item)]));
  return value;
}

async function verify(bundleBytes, genesisCbor, issuers) {
  let genesis;
  try {
    genesis = await parseGenesis(genesisCbor);
  } catch (error) {
    if (error instanceof GenesisError) throw new Invalid("genesis", `not a valid genesis: ${error.message}`);
    throw error;
  }
  const bundle = decodeBundle(bundleBytes);
  const chain = await validatorChain(bundle.validatorSets, genesis);
  const last = chain[chain.length - 1];
  const header = await checkHeader(bundle, last, genesis);
  let receipt;
  try {
    receipt = await verifyReceipt(bundle.receipt);
  } catch (error) {
    if (error instanceof ReceiptFailure) throw new Invalid("receipt", `${error.reason}: ${error.detail}`);
    throw error;
  }
  if (bundle.leafIndex >= header.receipts_size) {
    throw new Invalid("proof", `leaf index ${bundle.leafIndex} is not below the sealed log size ${header.receipts_size}`);
  }
  const proofFailure = await verifyInclusion(await leafHash(receipt.id), bundle.leafIndex, header.receipts_size, bundle.proof, header.receipts_root);
  if (proofFailure !== null) throw new Invalid("proof", `${proofFailure.reason}: ${proofFailure.detail}`);
  const issuerKey = receipt.body.get("issuer").get("key");
  const allowed = issuers === "any" ? true
    : issuers === "validators" ? last.validators.has(issuerKey)
      : issuers.some((key) => bytesEqual(key, issuerKey));
  if (!allowed) throw new Invalid("issuer", `issuer ${receipt.body.get("issuer").get("node")} is not allowed by the issuer policy`);
  const witness = bundle.witness === null ? null : await checkWitness(receipt, bundle.witness);
  return {
    ok: true,
    receipt: plain(receipt.body),
    receiptId: toHex(receipt.id),
    bundleId: toHex(await hashTagged(BUNDLE_TAG, bundleBytes)),
    kind: receipt.body.get("kind"),
    issuer: receipt.body.get("issuer").get("node"),
    leafIndex: plain(bundle.leafIndex),
    height: plain(header.height),
    blockHash: toHex(header.hash),
    chainId: genesis.chainId,
    genesisHash: toHex(genesis.hash),
    validators: last.validators.keys.map(toHex),
    transitions: chain.length - 1,
    witness: witness === null ? null : plain(witness),
  };
}

function asBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  return null;
}

/**
 * Verify a receipt bundle offline against the genesis the user trusts.
 *
 * @param {Uint8Array|ArrayBuffer} bundleBytes the bundle (docs/bundles.md), as `receipt_bundle` returns it
 * @param {Uint8Array|ArrayBuffer} genesisCbor codec.encode(genesis.to_value()) of the trusted genesis
 * @param {{issuers?: "any"|"validators"|Uint8Array[]}} options issuer policy, as `metanode receipt verify --issuers`
 *   (default "any"; "validators": only validators of the sealing height; a list: only those public keys)
 * @returns {Promise<object>} {ok: true, receipt, leafIndex, height, validators, ...} or {ok: false, part, exitCode, detail}
 */
export async function verifyBundle(bundleBytes, genesisCbor, { issuers = "any" } = {}) {
  const bundle = asBytes(bundleBytes);
  const genesis = asBytes(genesisCbor);
  try {
    if (genesis === null) throw new Invalid("genesis", "the genesis must be bytes");
    if (bundle === null) throw new Invalid("bundle", "the bundle must be bytes");
    return await verify(bundle, genesis, issuers);
  } catch (error) {
    if (error instanceof Invalid) return { ok: false, part: error.part, exitCode: EXIT_CODES[error.part], detail: error.detail };
    throw error;
  }
}
