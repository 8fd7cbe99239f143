"""Job artifacts: the result table and the witness of each run, kept by the
nodes that computed them and served to gateways that need them.

A ``job.exec`` receipt names its result and witness by *tagged* digests
(node/cage/results.py, node/cage/witness.py), not by SHA-256, so these do not
live in the content-addressed blob store: :class:`ArtifactStore` files them
under ``DATA_DIR/artifacts/{result,witness}/<digest>`` and re-derives the
digest from the bytes on every write and read, so a damaged or substituted
file is never served (it is removed and fetched again).

Who may read what: a processing node answers ``artifact_get`` only to nodes
the chain registered with the gateway role; a gateway answers a tenant
(``analytics_result``, ``analytics_witness``) only about the tenant's own
jobs. Every fetched artifact is checked against the digest the chain
recorded, so a lying peer can withhold an artifact but never substitute one.
Verified jobs have r identical results on r nodes: those are the replicas.
"""

from __future__ import annotations

import base64
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog
import trio

from node.base.errors import ErrorCode
from node.base.keys import public_key_from_peer_id
from node.cage.results import ResultError, decode_result, result_digest
from node.cage.witness import WitnessError, decode_witness_file
from node.p2p.jsonrpc import CallContext, Registry, RpcError

log = structlog.get_logger("metanode.artifacts")

KINDS = ("result", "witness")
MAX_ARTIFACT_BYTES = 64 * 1024 * 1024
FETCH_TIMEOUT_S = 20.0


class ArtifactError(ValueError):
    """Bytes that are not a valid artifact of the kind and digest claimed."""


def digest_of(kind: str, data: bytes) -> bytes:
    """The tagged digest a receipt would name for these bytes (ArtifactError if they are not one)."""
    if kind == "result":
        try:
            decode_result(data)
        except ResultError as exc:
            raise ArtifactError(str(exc)) from None
        return result_digest(data)
    if kind == "witness":
        try:
            return decode_witness_file(data)[1]
        except WitnessError as exc:
            raise ArtifactError(str(exc)) from None
    raise ArtifactError(f"unknown artifact kind {kind!r}; expected one of {', '.join(KINDS)}")


class ArtifactStore:
    """Results and witnesses by tagged digest, written atomically, checked on read."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for kind in KINDS:
            (root / kind).mkdir(parents=True, exist_ok=True)

    def path(self, kind: str, digest: bytes) -> Path:
        if kind not in KINDS or len(digest) != 32:
            raise ArtifactError(f"bad artifact name {kind}/{digest.hex()}")
        return self.root / kind / digest.hex()

    def put(self, kind: str, data: bytes, expected: bytes | None = None) -> bytes:
        digest = digest_of(kind, data)
        if expected is not None and digest != expected:
            raise ArtifactError(f"{kind} bytes hash to {digest.hex()}, not {expected.hex()}")
        target = self.path(kind, digest)
        if not target.exists():
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return digest

    def get(self, kind: str, digest: bytes) -> bytes | None:
        """The artifact's bytes, or None if not held (a damaged file is removed)."""
        path = self.path(kind, digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            if digest_of(kind, data) == digest:
                return data
        except ArtifactError:
            pass
        log.warning("damaged artifact removed", kind=kind, digest=digest.hex())
        path.unlink(missing_ok=True)
        return None


_ARTIFACT_PARAMS = {"properties": {"kind": {"enum": list(KINDS)}, "digest": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
                    "required": ["kind", "digest"]}


def register_artifact_methods(registry: Registry, store: ArtifactStore, is_gateway: Callable[[bytes], bool]) -> None:
    """``artifact_get`` on a node that runs jobs: for registered gateways only."""

    async def artifact_get(ctx: CallContext, kind: str, digest: str) -> dict[str, Any]:
        if not is_gateway(public_key_from_peer_id(ctx.peer_id)):
            raise RpcError(ErrorCode.NOT_A_GATEWAY, "artifacts are served to registered gateway nodes only")
        data = store.get(kind, bytes.fromhex(digest))
        if data is None:
            raise RpcError(ErrorCode.ARTIFACT_NOT_HELD, "artifact not held here", {"kind": kind, "digest": digest})
        return {"kind": kind, "digest": digest, "data": base64.b64encode(data).decode()}

    registry.register("artifact_get", artifact_get, _ARTIFACT_PARAMS,
                      "A job result or witness this node computed (registered gateways only).")


class ArtifactFetcher:
    """A gateway's view: the local store first, then the nodes that reported
    the artifact on chain, each answer checked against the chain's digest."""

    def __init__(self, store: ArtifactStore, host: Any, own_peer_id: str) -> None:
        self.store = store
        self.host = host
        self.own_peer_id = own_peer_id

    async def fetch(self, kind: str, digest: bytes, holders: Sequence[str]) -> bytes | None:
        fetched = await self.fetch_from(kind, digest, holders)
        return fetched[0] if fetched is not None else None

    async def fetch_from(self, kind: str, digest: bytes, holders: Sequence[str]) -> tuple[bytes, str] | None:
        """The artifact and the peer id of the node it came from (this node's own
        when its store has it), trying ``holders`` in the order given."""
        data = self.store.get(kind, digest)
        if data is not None:
            return data, self.own_peer_id
        for peer in holders:
            if peer == self.own_peer_id:
                continue
            data = await self._from_peer(peer, kind, digest)
            if data is not None:
                self.store.put(kind, data, expected=digest)
                return data, peer
        return None

    async def _from_peer(self, peer: str, kind: str, digest: bytes) -> bytes | None:
        from libp2p.peer.id import ID

        from node.p2p.rpc import open_rpc_client

        try:
            with trio.fail_after(FETCH_TIMEOUT_S):
                async with open_rpc_client(self.host, ID.from_base58(peer), timeout=FETCH_TIMEOUT_S,
                                           max_frame=2 * MAX_ARTIFACT_BYTES) as client:
                    answer = await client.call("artifact_get", {"kind": kind, "digest": digest.hex()}, timeout=FETCH_TIMEOUT_S)
            data = base64.b64decode(answer["data"], validate=True)
            if digest_of(kind, data) != digest:
                raise ArtifactError("the peer sent bytes with another digest")
            return data
        except Exception as exc:  # noqa: BLE001 -- any peer failure means: try the next holder
            log.info("artifact not fetched from a peer", peer=peer, kind=kind, digest=digest.hex(), reason=str(exc)[:200])
            return None


def json_cells(columns: Sequence[Sequence[str]], rows: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """Canonical cells as JSON values: DOUBLE/FLOAT back to numbers (NaN and
    infinities as strings), other bytes as 0x-hex; decimals stay exact strings."""
    import math
    import struct

    kinds = [str(c[1]).upper() for c in columns]
    out = []
    for row in rows:
        cells = []
        for kind, cell in zip(kinds, row):
            if isinstance(cell, bytes):
                if kind in ("DOUBLE", "FLOAT") and len(cell) == 8:
                    value = struct.unpack(">d", cell)[0]
                    cell = value if math.isfinite(value) else str(value)
                else:
                    cell = "0x" + cell.hex()
            cells.append(cell)
        out.append(cells)
    return out


def result_json(data: bytes) -> dict[str, Any]:
    value = decode_result(data)
    columns = [[str(name), str(kind)] for name, kind in value["columns"]]
    return {"columns": columns, "order": value["order"], "rows": json_cells(columns, value["rows"]),
            "row_count": len(value["rows"])}


def plain(value: Any) -> Any:
    """A CBOR value (a witness record) as JSON: bytes become hex."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
