"""What a cage job is (JobSpec), what running it gives (JobOutcome), and the
length-prefixed CBOR frames the pool, fork server and child exchange."""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.base.codec import CodecError, decode, encode
from node.base.errors import UserError

KINDS = ("sql", "python-fn")
INPUT_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
MAX_FRAME = 512 * 1024 * 1024
MAX_SEED_BYTES = 64


class CageError(UserError):
    """A job could not be run as asked (bad spec, policy not enforceable,
    worker lost). Jobs that ran and failed give a JobOutcome instead."""


@dataclass(frozen=True)
class JobSpec:
    """One job. ``inputs`` maps SQL-safe names to files (CSV or Parquet);
    ``seed`` and ``clock`` come from the block that scheduled the job;
    ``output_dir`` must be an existing, empty directory (None: a scratch
    directory the cage removes afterwards)."""

    kind: str
    policy: str
    inputs: dict[str, str] = field(default_factory=dict)
    sql: str | None = None
    function: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    seed: bytes = b""
    clock: int = 0
    output_dir: str | None = None

    def validate(self) -> None:
        """Raise CageError naming the first bad field."""
        if self.kind not in KINDS:
            raise CageError(f"job.kind: {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.kind == "sql" and (not isinstance(self.sql, str) or self.function is not None):
            raise CageError("job.sql: a sql job needs SQL text and no function")
        if self.kind == "python-fn" and (not isinstance(self.function, str) or self.sql is not None):
            raise CageError("job.function: a python-fn job needs a function name and no SQL")
        if not isinstance(self.policy, str) or not self.policy:
            raise CageError("job.policy: a policy name is required")
        for name, path in self.inputs.items():
            if not isinstance(name, str) or not INPUT_NAME.match(name):
                raise CageError(f"job.inputs: {name!r} is not a valid input name (lowercase letters, digits, _)")
            if not isinstance(path, str) or not os.path.isfile(path):
                raise CageError(f"job.inputs.{name}: {path!r} is not a readable file")
        if not isinstance(self.seed, bytes) or len(self.seed) > MAX_SEED_BYTES:
            raise CageError(f"job.seed: must be at most {MAX_SEED_BYTES} bytes")
        if not isinstance(self.clock, int) or isinstance(self.clock, bool) or self.clock < 0:
            raise CageError("job.clock: must be a non-negative integer (seconds)")
        if not isinstance(self.params, dict):
            raise CageError("job.params: must be a map")
        try:
            encode(self.params)
        except CodecError as exc:
            raise CageError(f"job.params: {exc}") from None
        if self.output_dir is not None:
            out = Path(self.output_dir)
            if not out.is_dir():
                raise CageError(f"job.output_dir: {self.output_dir!r} is not a directory")
            if any(out.iterdir()):
                raise CageError(f"job.output_dir: {self.output_dir!r} is not empty")

    def to_value(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "policy": self.policy,
            "inputs": {name: os.path.abspath(path) for name, path in sorted(self.inputs.items())},
            "sql": self.sql, "function": self.function, "params": self.params,
            "seed": self.seed, "clock": self.clock,
            "output_dir": os.path.abspath(self.output_dir) if self.output_dir else None,
        }

    @classmethod
    def from_value(cls, value: dict[str, Any]) -> "JobSpec":
        return cls(**value)


@dataclass(frozen=True)
class JobOutcome:
    """The result of one run: ``status`` is ``ok`` or why not (``refused``,
    ``error``, ``killed``, ``cpu_limit``, ``memory_limit``, ``timeout``,
    ``output_limit``, ``crashed``). The witness is always there."""

    status: str
    detail: str
    result: bytes | None
    result_digest: bytes | None
    witness: dict[str, Any]
    witness_digest: bytes
    witness_file: bytes  # the CBOR witness file (record + unhashed observations)
    observed: dict[str, int]

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def denials(self) -> list[dict[str, Any]]:
        return list(self.witness["denials"])

    def save_witness(self, path: str | Path) -> None:
        Path(path).write_bytes(self.witness_file)

    @classmethod
    def from_value(cls, value: dict[str, Any]) -> "JobOutcome":
        return cls(**value)


def encode_frame(value: Any) -> bytes:
    """One frame: 4-byte big-endian length + deterministic CBOR."""
    payload = encode(value)
    return struct.pack(">I", len(payload)) + payload


def write_frame(fd: int, value: Any) -> None:
    """Write one frame (see :func:`encode_frame`) to a blocking fd."""
    view = memoryview(encode_frame(value))
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _read_exact(fd: int, size: int) -> bytes | None:
    chunks, remaining = [], size
    while remaining:
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int, *, max_size: int = MAX_FRAME) -> Any:
    """Read one frame; None at a clean end of stream. CodecError on garbage."""
    header = _read_exact(fd, 4)
    if header is None:
        return None
    (size,) = struct.unpack(">I", header)
    if size > max_size:
        raise CodecError(f"frame of {size} bytes exceeds {max_size}")
    payload = _read_exact(fd, size)
    if payload is None:
        raise CodecError("stream ended inside a frame")
    return decode(payload)


def split_frames(buffer: bytes, *, max_size: int = MAX_FRAME) -> tuple[list[Any], bytes]:
    """Decode the complete frames at the start of ``buffer``; return them and
    the unconsumed tail."""
    frames, offset = [], 0
    while len(buffer) - offset >= 4:
        (size,) = struct.unpack_from(">I", buffer, offset)
        if size > max_size:
            raise CodecError(f"frame of {size} bytes exceeds {max_size}")
        if len(buffer) - offset - 4 < size:
            break
        frames.append(decode(buffer[offset + 4: offset + 4 + size]))
        offset += 4 + size
    return frames, buffer[offset:]


# The whole environment a job sees. PYTHONHASHSEED only takes effect at
# interpreter start, so the fork server is started with it and children
# inherit the fixed hash secret.
CAGE_ENVIRONMENT = {
    "PYTHONHASHSEED": "0",
    "PYTHONDONTWRITEBYTECODE": "1",
    "TZ": "UTC",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PATH": "/usr/bin:/bin",
    "HOME": "/nonexistent",
}
