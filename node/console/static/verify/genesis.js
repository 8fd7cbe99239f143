// The genesis the user trusts, from its canonical CBOR value (docs/genesis.md "The canonical value";
// node/consensus/genesis.py Genesis.to_value and its validation).
//
// The genesis hash is hash_tagged("metanode/genesis/v1", those bytes). The bytes are accepted only when they
// are exactly what Genesis.to_value() encodes to for some valid genesis (every key in range, validators
// sorted, `admission` present only when not the default, `rules` only with rules that differ from their
// defaults, `cluster` only with a non-empty name, `min_block_interval_ms` only when it differs from
// block_period_ms), so the hash computed here is the one every header of that chain commits to.

import { CborError, compareBytes, decode, hasExactKeys, intIn, isMap } from "./cbor.js";
import { hashTagged } from "./crypto.js";

export const GENESIS_TAG = "metanode/genesis/v1";
const MAX_GENESIS_SIZE = 1024 * 1024;
const CHAIN_ID = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const TOP_INTS = {
  genesis_time_ms: [0, 2 ** 53],
  block_period_ms: [0, 3_600_000],
  round_timeout_base_ms: [1, 3_600_000],
  round_timeout_cap_ms: [1, 86_400_000],
};
const LIMIT_INTS = {
  max_block_bytes: [1024, 256 * 1024 * 1024],
  max_txs_per_block: [1, 1_000_000],
  max_timestamp_drift_ms: [0, 3_600_000],
};
// name -> [default, low, high] (genesis.py RULES)
const RULES = {
  max_replication: [8, 1, 8],
  max_attempts: [3, 1, 100],
  min_deadline_blocks: [2, 1, 1_000_000],
  max_deadline_blocks: [10_000, 1, 1_000_000],
  exclusion_blocks: [20, 1, 1_000_000],
  max_capacity: [64, 1, 1024],
  max_inputs: [16, 1, 256],
  max_query_bytes: [16 * 1024, 1, 64 * 1024],
  max_batch_receipts: [64, 1, 1024],
  max_services: [16, 1, 1024],
  min_service_interval: [5, 1, 100_000],
  ack_blocks: [0, 0, 1_000_000],
  attest_once: [0, 0, 1], // 0 or 1 (an integer, like every rule)
};
const OPTIONAL_KEYS = ["admission", "rules", "cluster", "min_block_interval_ms"];
const CLUSTER_NAME = /^[^\x00-\x1f\x7f]{1,64}$/u;
const POLICIES = ["open", "allow-list", "by-vote"];

export class GenesisError extends Error {}

function sortedKeys(value, what, low, high) {
  if (!Array.isArray(value) || value.length < low || value.length > high) {
    throw new GenesisError(`${what}: expected ${low}..${high} public keys`);
  }
  value.forEach((key, i) => {
    if (!(key instanceof Uint8Array) || key.length !== 32) throw new GenesisError(`${what}[${i}]: expected 32 bytes`);
    if (i && compareBytes(value[i - 1], key) >= 0) throw new GenesisError(`${what}: keys must be sorted and distinct`);
  });
  return value;
}

function checkInts(map, ranges, where) {
  for (const [name, [low, high]] of Object.entries(ranges)) {
    if (!intIn(map.get(name), low, high)) throw new GenesisError(`${where}${name}: expected ${low}..${high}`);
  }
}

/** Parse the genesis's canonical CBOR. Returns {hash, chainId, validators (sorted keys)}; throws GenesisError. */
export async function parseGenesis(genesisCbor) {
  let value;
  try {
    value = decode(genesisCbor, { maxSize: MAX_GENESIS_SIZE });
  } catch (error) {
    if (error instanceof CborError) throw new GenesisError(`not canonical CBOR: ${error.message}`);
    throw error;
  }
  if (!isMap(value)) throw new GenesisError("expected a map");
  const required = ["chain_id", ...Object.keys(TOP_INTS), "validators", "limits"];
  const keys = [...required, ...OPTIONAL_KEYS.filter((key) => value.has(key))];
  if (!hasExactKeys(value, keys)) {
    throw new GenesisError(`expected the keys ${required.join(", ")} (and optionally ${OPTIONAL_KEYS.join(", ")})`);
  }
  const chainId = value.get("chain_id");
  if (typeof chainId !== "string" || !CHAIN_ID.test(chainId)) throw new GenesisError("chain_id: expected 1-64 of [a-z0-9._-]");
  checkInts(value, TOP_INTS, "");
  if (value.get("round_timeout_cap_ms") < value.get("round_timeout_base_ms")) {
    throw new GenesisError("round_timeout_cap_ms: must be at least round_timeout_base_ms");
  }
  const validators = sortedKeys(value.get("validators"), "validators", 1, 256);
  const limits = value.get("limits");
  if (!hasExactKeys(limits, Object.keys(LIMIT_INTS))) throw new GenesisError("limits: expected the three limits");
  checkInts(limits, LIMIT_INTS, "limits.");
  if (value.has("admission")) checkAdmission(value.get("admission"));
  if (value.has("rules")) checkRules(value.get("rules"));
  if (value.has("cluster")) checkCluster(value.get("cluster"));
  if (value.has("min_block_interval_ms")) {
    const interval = value.get("min_block_interval_ms");
    if (!intIn(interval, 0, value.get("block_period_ms") - 1)) {
      throw new GenesisError("min_block_interval_ms: expected 0..block_period_ms - 1 (equal to the period, it is left out)");
    }
  }
  return { hash: await hashTagged(GENESIS_TAG, genesisCbor), chainId, validators };
}

function checkAdmission(admission) {
  if (!hasExactKeys(admission, ["nodes", "tenants", "admitted_nodes", "admitted_tenants"])) {
    throw new GenesisError("admission: expected nodes, tenants, admitted_nodes, admitted_tenants");
  }
  let isDefault = true;
  for (const [policy, listed] of [["nodes", "admitted_nodes"], ["tenants", "admitted_tenants"]]) {
    const mode = admission.get(policy);
    if (!POLICIES.includes(mode)) throw new GenesisError(`admission.${policy}: expected one of ${POLICIES.join(", ")}`);
    const keys = sortedKeys(admission.get(listed), `admission.${listed}`, 0, 4096);
    if (mode === "open" && keys.length) throw new GenesisError(`admission.${listed}: must be empty when ${policy} is open`);
    if (mode === "allow-list" && !keys.length) throw new GenesisError(`admission.${listed}: must name a key under allow-list`);
    isDefault = isDefault && mode === "open";
  }
  if (isDefault) throw new GenesisError("admission: present but the default (the canonical value leaves it out)");
}

function checkCluster(cluster) {
  if (!hasExactKeys(cluster, ["name"])) throw new GenesisError("cluster: expected only name");
  const name = cluster.get("name");
  if (typeof name !== "string" || !CLUSTER_NAME.test(name) || [...name].length > 64) {
    throw new GenesisError("cluster.name: expected 1-64 printable characters (an empty name is left out)");
  }
}

function checkRules(rules) {
  if (!isMap(rules) || rules.size === 0) throw new GenesisError("rules: expected a non-empty map (the canonical value leaves it out when empty)");
  const values = {};
  for (const [name, [fallback, low, high]] of Object.entries(RULES)) {
    values[name] = fallback;
    if (!rules.has(name)) continue;
    const value = rules.get(name);
    if (!intIn(value, low, high)) throw new GenesisError(`rules.${name}: expected ${low}..${high}`);
    if (value === fallback) throw new GenesisError(`rules.${name}: is its default (the canonical value leaves it out)`);
    values[name] = value;
  }
  for (const name of rules.keys()) {
    if (!Object.hasOwn(RULES, name)) throw new GenesisError(`rules.${name}: not a rule`);
  }
  if (values.min_deadline_blocks > values.max_deadline_blocks) {
    throw new GenesisError("rules.min_deadline_blocks: must be at most max_deadline_blocks");
  }
}
