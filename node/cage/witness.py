"""The witness record of a cage run, its digest and its file format.

The record holds everything that determines the result (inputs by digest,
code digests, policy, environment, seed, logical clock, layers applied) and
everything the run produced (result and output digests, exit status, the
denied operations the job attempted). Two honest runs of one job give the
same record byte for byte. Observed resource use and local file paths vary
between machines, so they sit beside the record in the file, outside the
digest.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from node.base.codec import CodecError, decode, encode, hash_tagged, hash_value
from node.base.merkle import merkle_root

WITNESS_DIGEST_TAG = "metanode/cage/witness/v1"
JOB_DIGEST_TAG = "metanode/cage/job/v1"
SEED_TAG = "metanode/cage/seed/v1"
WORKER_DIGEST_TAG = "metanode/cage/worker/v1"
WITNESS_VERSION = 1
MAX_WITNESS_FILE = 64 * 1024 * 1024
PARQUET_MAGIC = b"PAR1"

# The modules whose code runs a job: their source is the worker digest.
WORKER_MODULES = (
    "forkserver.py", "spare.py", "worker.py", "inputs.py", "sqlgate.py", "results.py", "functions.py",
    "policy.py", "syscalls.py", "layers.py", "witness.py", "job.py",
)


class WitnessError(ValueError):
    """A witness file that is malformed or whose digest does not match."""


def file_sha256(path: str) -> tuple[int, bytes]:
    """(size, SHA-256) of a regular file, read without following a final symlink."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path} is not a regular file")
        digest, size = hashlib.sha256(), 0
        while chunk := os.read(fd, 1 << 20):
            digest.update(chunk)
            size += len(chunk)
        return size, digest.digest()
    finally:
        os.close(fd)


def input_format(path: str) -> str:
    """``parquet`` if the file starts with the Parquet magic, ``jsonl`` if its
    first character (after a UTF-8 byte order mark and white space) is ``{``,
    else ``csv``. Storage ingest refuses a dataset this names otherwise than
    its declared format, so this is the format it was uploaded as."""
    with open(path, "rb") as handle:
        head = handle.read(64 * 1024)
    if head[:4] == PARQUET_MAGIC:
        return "parquet"
    return "jsonl" if head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")[:1] == b"{" else "csv"


def describe_inputs(inputs: dict[str, str]) -> list[dict[str, Any]]:
    """Name, size, SHA-256 and format of each input, sorted by name."""
    described = []
    for name, path in sorted(inputs.items()):
        size, digest = file_sha256(path)
        described.append({"name": name, "size": size, "sha256": digest, "format": input_format(path)})
    return described


def inputs_root(described: list[dict[str, Any]]) -> bytes:
    """RFC 9162 Merkle root over the encoded (name, size, sha256) of each input."""
    return merkle_root([encode({"name": d["name"], "size": d["size"], "sha256": d["sha256"]})
                        for d in described])


def describe_outputs(output_dir: str) -> list[dict[str, Any]]:
    """Every entry under the output directory, sorted by relative path:
    regular files with size and SHA-256, anything else by kind only (a
    symlink is never followed)."""
    entries: list[dict[str, Any]] = []
    root = Path(output_dir)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            mode = os.lstat(full).st_mode
            if stat.S_ISREG(mode):
                size, digest = file_sha256(full)
                entries.append({"path": rel, "kind": "file", "size": size, "sha256": digest})
            else:
                entries.append({"path": rel, "kind": "symlink" if stat.S_ISLNK(mode) else "other",
                                "size": 0, "sha256": b""})
    return sorted(entries, key=lambda e: e["path"])


def effective_seed(job_seed: bytes, job_digest: bytes) -> bytes:
    """The RNG seed a job sees: derived from the block's seed and the job."""
    return hash_tagged(SEED_TAG, job_seed + job_digest)


def job_digest(job_part: dict[str, Any]) -> bytes:
    """Digest of the job's code: kind, SQL or function (+ its code digest), params."""
    return hash_value(JOB_DIGEST_TAG, job_part)


def worker_digest() -> bytes:
    """Digest over the source of every module that runs a job."""
    here = Path(__file__).resolve().parent
    codec = here.parent / "base" / "codec.py"
    parts = {name: (here / name).read_bytes() for name in WORKER_MODULES}
    parts["codec.py"] = codec.read_bytes()
    return hash_value(WORKER_DIGEST_TAG, {name: hashlib.sha256(data).digest() for name, data in parts.items()})


def witness_digest(record: dict[str, Any]) -> bytes:
    return hash_value(WITNESS_DIGEST_TAG, record)


def encode_witness_file(record: dict[str, Any], unhashed: dict[str, Any]) -> bytes:
    """The witness file: the record, its digest, and what is kept outside it."""
    return encode({"record": record, "witness_digest": witness_digest(record), "unhashed": unhashed})


def decode_witness_file(data: bytes) -> tuple[dict[str, Any], bytes, dict[str, Any]]:
    """(record, stored digest, unhashed part); WitnessError if the file is
    malformed or its record does not hash to the digest it carries."""
    try:
        value = decode(data, max_size=MAX_WITNESS_FILE)
    except CodecError as exc:
        raise WitnessError(f"not a witness file: {exc}") from None
    if not isinstance(value, dict) or set(value) != {"record", "witness_digest", "unhashed"}:
        raise WitnessError("not a witness file: expected record, witness_digest and unhashed")
    record = value["record"]
    if not isinstance(record, dict) or record.get("version") != WITNESS_VERSION:
        raise WitnessError(f"unsupported witness version {record.get('version') if isinstance(record, dict) else None!r}")
    if witness_digest(record) != value["witness_digest"]:
        raise WitnessError("witness record does not match its digest (file altered)")
    return record, value["witness_digest"], value["unhashed"]
