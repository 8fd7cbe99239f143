// Deterministic CBOR, as node/base/codec.py reads and writes it (docs/encoding.md section 1).
//
// The Python decoder parses with cbor2, re-encodes the value and refuses the input unless both are
// byte-identical. This decoder checks each rule directly instead, which accepts exactly the same inputs:
// shortest integer/length arguments, definite lengths, text map keys strictly increasing by their encoded
// bytes (so no duplicates), no floats, tags, undefined or other simple values, valid UTF-8 text, nesting at
// most 64 levels (an item at depth 65 is refused, even a scalar), no trailing bytes, no empty input.
//
// Values: unsigned and negative integers are Numbers when they are safe integers, BigInts otherwise; byte
// strings are Uint8Arrays; text is a string; arrays are Arrays; maps are Maps (text keys in encoded order);
// false/true/null are themselves.

export const MAX_DEPTH = 64;

export class CborError extends Error {}

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const utf8Encoder = new TextEncoder();
const TWO_64 = 1n << 64n;

/** Decode canonical CBOR; throws CborError for anything codec.decode refuses. */
export function decode(data, { maxSize = null } = {}) {
  if (!(data instanceof Uint8Array)) throw new CborError(`expected bytes, got ${typeof data}`);
  if (maxSize !== null && data.length > maxSize) {
    throw new CborError(`${data.length} bytes exceeds the limit of ${maxSize}`);
  }
  if (data.length === 0) throw new CborError("empty input");
  const reader = { data, pos: 0 };
  const value = readItem(reader, 0);
  if (reader.pos !== data.length) throw new CborError("not canonical CBOR: trailing bytes");
  return value;
}

function need(reader, count) {
  if (count > reader.data.length - reader.pos) throw new CborError("malformed CBOR: truncated");
}

// The argument of an initial byte; refuses indefinite lengths, reserved values and non-shortest forms.
function readArgument(reader, info) {
  if (info < 24) return info;
  const { data } = reader;
  let value;
  if (info === 24) {
    need(reader, 1);
    value = data[reader.pos];
    reader.pos += 1;
    if (value < 24) throw new CborError("not canonical CBOR: argument not in its shortest form");
    return value;
  }
  if (info === 25) {
    need(reader, 2);
    value = (data[reader.pos] << 8) | data[reader.pos + 1];
    reader.pos += 2;
    if (value < 0x100) throw new CborError("not canonical CBOR: argument not in its shortest form");
    return value;
  }
  if (info === 26) {
    need(reader, 4);
    value = ((data[reader.pos] << 24) >>> 0) + (data[reader.pos + 1] << 16) + (data[reader.pos + 2] << 8) + data[reader.pos + 3];
    reader.pos += 4;
    if (value < 0x10000) throw new CborError("not canonical CBOR: argument not in its shortest form");
    return value;
  }
  if (info === 27) {
    need(reader, 8);
    let big = 0n;
    for (let i = 0; i < 8; i++) big = (big << 8n) | BigInt(data[reader.pos + i]);
    reader.pos += 8;
    if (big < 0x100000000n) throw new CborError("not canonical CBOR: argument not in its shortest form");
    return big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
  }
  if (info === 31) throw new CborError("indefinite-length items are not allowed");
  throw new CborError(`malformed CBOR: reserved additional information ${info}`);
}

function asLength(reader, value) {
  if (typeof value === "bigint" || value > reader.data.length - reader.pos) {
    throw new CborError("malformed CBOR: length beyond the end of the input");
  }
  return value;
}

function readItem(reader, depth) {
  if (depth > MAX_DEPTH) throw new CborError(`nested deeper than ${MAX_DEPTH} levels`);
  need(reader, 1);
  const initial = reader.data[reader.pos];
  reader.pos += 1;
  const major = initial >> 5;
  const info = initial & 0x1f;
  switch (major) {
    case 0:
      return readArgument(reader, info);
    case 1: {
      const n = readArgument(reader, info);
      if (typeof n === "bigint") return -1n - n;
      const value = -1 - n;
      return Number.isSafeInteger(value) ? value : -1n - BigInt(n);
    }
    case 2: {
      const length = asLength(reader, readArgument(reader, info));
      const bytes = reader.data.slice(reader.pos, reader.pos + length);
      reader.pos += length;
      return bytes;
    }
    case 3: {
      const length = asLength(reader, readArgument(reader, info));
      const raw = reader.data.subarray(reader.pos, reader.pos + length);
      reader.pos += length;
      try {
        return utf8.decode(raw);
      } catch {
        throw new CborError("malformed CBOR: text is not valid UTF-8");
      }
    }
    case 4: {
      const count = asLength(reader, readArgument(reader, info));
      const items = [];
      for (let i = 0; i < count; i++) items.push(readItem(reader, depth + 1));
      return items;
    }
    case 5: {
      const count = asLength(reader, readArgument(reader, info));
      const map = new Map();
      let previous = null;
      for (let i = 0; i < count; i++) {
        const keyStart = reader.pos;
        if (reader.pos >= reader.data.length || reader.data[reader.pos] >> 5 !== 3) {
          throw new CborError("map keys must be text strings");
        }
        const key = readItem(reader, depth + 1);
        const keyBytes = reader.data.subarray(keyStart, reader.pos);
        if (previous !== null && compareBytes(previous, keyBytes) >= 0) {
          throw new CborError("not canonical CBOR: map keys not sorted or repeated");
        }
        previous = keyBytes;
        map.set(key, readItem(reader, depth + 1));
      }
      return map;
    }
    case 6:
      throw new CborError("CBOR tags are not allowed");
    default:
      if (initial === 0xf4) return false;
      if (initial === 0xf5) return true;
      if (initial === 0xf6) return null;
      throw new CborError(`CBOR simple value or float 0x${initial.toString(16)} is not allowed`);
  }
}

/** Bytewise comparison (shorter first when one is a prefix of the other). */
export function compareBytes(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

export function bytesEqual(a, b) {
  return a instanceof Uint8Array && b instanceof Uint8Array && a.length === b.length && compareBytes(a, b) === 0;
}

// -- encoding (what the verifier must build itself: seal messages, validator set hashes) -------------------
function head(major, value, out) {
  const n = typeof value === "bigint" ? value : BigInt(value);
  const m = major << 5;
  if (n < 24n) out.push(m | Number(n));
  else if (n < 0x100n) out.push(m | 24, Number(n));
  else if (n < 0x10000n) out.push(m | 25, Number(n >> 8n), Number(n & 0xffn));
  else if (n < 0x100000000n) {
    out.push(m | 26);
    for (let s = 24n; s >= 0n; s -= 8n) out.push(Number((n >> s) & 0xffn));
  } else {
    out.push(m | 27);
    for (let s = 56n; s >= 0n; s -= 8n) out.push(Number((n >> s) & 0xffn));
  }
}

function encodeInto(value, out) {
  if (value === null) out.push(0xf6);
  else if (value === false) out.push(0xf4);
  else if (value === true) out.push(0xf5);
  else if (typeof value === "number" || typeof value === "bigint") {
    if (typeof value === "number" && !Number.isSafeInteger(value)) throw new CborError(`cannot encode ${value}`);
    const n = BigInt(value);
    if (n >= TWO_64 || n < -TWO_64) throw new CborError(`integer ${n} does not fit in 64 bits`);
    if (n >= 0n) head(0, n, out);
    else head(1, -1n - n, out);
  } else if (value instanceof Uint8Array) {
    head(2, value.length, out);
    for (const byte of value) out.push(byte);
  } else if (typeof value === "string") {
    const bytes = utf8Encoder.encode(value);
    head(3, bytes.length, out);
    for (const byte of bytes) out.push(byte);
  } else if (Array.isArray(value)) {
    head(4, value.length, out);
    for (const item of value) encodeInto(item, out);
  } else if (value instanceof Map || typeof value === "object") {
    const entries = value instanceof Map ? [...value.entries()] : Object.entries(value);
    const encoded = entries.map(([key, item]) => {
      if (typeof key !== "string") throw new CborError("map keys must be text strings");
      const keyBytes = [];
      encodeInto(key, keyBytes);
      return [Uint8Array.from(keyBytes), item];
    });
    encoded.sort((a, b) => compareBytes(a[0], b[0]));
    head(5, encoded.length, out);
    for (const [keyBytes, item] of encoded) {
      for (const byte of keyBytes) out.push(byte);
      encodeInto(item, out);
    }
  } else {
    throw new CborError(`cannot encode a ${typeof value}`);
  }
}

/** Deterministic CBOR of a value (maps: Map or plain object with text keys). */
export function encode(value) {
  const out = [];
  encodeInto(value, out);
  return Uint8Array.from(out);
}

// -- small helpers shared by the verifier's modules ---------------------------------------------------------
export function toHex(bytes) {
  let text = "";
  for (const byte of bytes) text += byte.toString(16).padStart(2, "0");
  return text;
}

export function fromHex(text) {
  if (typeof text !== "string" || text.length % 2 || /[^0-9a-fA-F]/.test(text)) throw new CborError("not hex");
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function isInt(value) {
  return (typeof value === "number" && Number.isInteger(value)) || typeof value === "bigint";
}

/** An integer (not a bool) in [low, high]; bounds may be Numbers or BigInts. */
export function intIn(value, low, high) {
  return isInt(value) && value >= low && value <= high;
}

export function isMap(value) {
  return value instanceof Map;
}

/** Whether a Map has exactly these keys. */
export function hasExactKeys(map, keys) {
  return map instanceof Map && map.size === keys.length && keys.every((key) => map.has(key));
}
