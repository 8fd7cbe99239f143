"""JSON-RPC methods of the storage service: ``dataset_upload``,
``dataset_upload_status``, ``dataset_list``, ``dataset_get``.

The tenant is always the caller: the Ed25519 public key behind the
authenticated peer id of the RPC stream. A tenant sees only its own
datasets; another tenant's dataset is reported exactly like a missing one.

``dataset_upload`` is chunked: the first call names the dataset (``name``,
``format``, optionally ``on_bad_rows``) and gets an ``upload`` id back;
later calls pass that id and ``offset``, the bytes sent before the chunk: a
chunk whose offset is not what the node holds is refused with
UPLOAD_OFFSET_MISMATCH and ``data.received``, from where the client
resends (``dataset_upload_status`` tells a reconnecting client the same).
The call with ``final: true`` stores, inspects, replicates and catalogs the
dataset and returns its row. Each peer may have a bounded number of uploads
open; an upload idle longer than the timeout is dropped with its partial
bytes. The protocol is documented byte by byte in docs/storage.md.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from node.base.errors import ErrorCode
from node.base.keys import public_key_from_peer_id
from node.p2p.jsonrpc import CallContext, Registry, RpcError
from node.roles.storage.blobstore import BlobWriter
from node.roles.storage.catalog import FORMATS, MAX_NAME, check_name_and_format
from node.roles.storage.errors import (
    BadChunk,
    DatasetNotFound,
    InvalidDataset,
    StorageError,
    TooManyUploads,
    UploadNotFound,
    UploadOffsetMismatch,
)
from node.roles.storage.ingest import BAD_ROW_POLICIES
from node.roles.storage.service import StorageService

MAX_UPLOAD_CHUNK = 1024 * 1024  # decoded bytes per dataset_upload call
MAX_UPLOADS_PER_PEER = 4
UPLOAD_IDLE_TIMEOUT_S = 300.0
_B64_MAX = 4 * ((MAX_UPLOAD_CHUNK + 2) // 3)


@dataclass
class Upload:
    id: str
    peer: str
    tenant: bytes
    name: str
    format: str
    writer: BlobWriter
    last_active: float
    on_bad_rows: str = "fail"


class Uploads:
    """Open chunked uploads, bounded per peer and dropped when idle."""

    def __init__(self, service: StorageService, *, max_per_peer: int = MAX_UPLOADS_PER_PEER,
                 idle_timeout: float = UPLOAD_IDLE_TIMEOUT_S) -> None:
        self.service = service
        self.max_per_peer = max_per_peer
        self.idle_timeout = idle_timeout
        self._open: dict[str, Upload] = {}

    def __len__(self) -> int:
        return len(self._open)

    def sweep(self, now: float) -> int:
        """Drop uploads idle since before ``now - idle_timeout``; return how many."""
        stale = [u for u in self._open.values() if now - u.last_active > self.idle_timeout]
        for upload in stale:
            self.drop(upload)
        return len(stale)

    def drop(self, upload: Upload) -> None:
        self._open.pop(upload.id, None)
        upload.writer.abort()

    def finish(self, upload: Upload) -> None:
        """Forget a completed upload (its writer is committed by the caller)."""
        self._open.pop(upload.id, None)

    def start(self, peer: str, tenant: bytes, name: str, fmt: str, now: float, on_bad_rows: str = "fail") -> Upload:
        if sum(1 for u in self._open.values() if u.peer == peer) >= self.max_per_peer:
            raise TooManyUploads(f"at most {self.max_per_peer} uploads may be open at once", limit=self.max_per_peer)
        upload = Upload(secrets.token_hex(16), peer, tenant, name, fmt, self.service.store.writer(), now, on_bad_rows)
        self._open[upload.id] = upload
        return upload

    def get(self, upload_id: str, peer: str) -> Upload:
        upload = self._open.get(upload_id)
        if upload is None or upload.peer != peer:
            raise UploadNotFound("no such upload (unknown, finished, or dropped after being idle)", upload=upload_id[:64])
        return upload

    def pending_bytes(self, tenant: bytes, *, besides: Upload) -> int:
        return sum(u.writer.size for u in self._open.values() if u.tenant == tenant and u is not besides)

    async def run_sweeper(self, interval: float = 30.0) -> None:
        """Sweep forever (start it in the service's nursery)."""
        while True:
            await trio.sleep(interval)
            self.sweep(trio.current_time())


def tenant_of(ctx: CallContext) -> bytes:
    """The caller's tenant key (the public key of its peer id)."""
    try:
        return public_key_from_peer_id(ctx.peer_id)
    except ValueError:
        raise RpcError(ErrorCode.UNAUTHORIZED, "Unauthorized", {"reason": "the caller's peer id is not an Ed25519 key"}) from None


def _rpc_error(exc: StorageError) -> RpcError:
    return RpcError(exc.code, exc.message, exc.to_data())


def _decode_chunk(chunk: str) -> bytes:
    try:
        data = base64.b64decode(chunk, validate=True)
    except (binascii.Error, ValueError):
        raise BadChunk("chunk is not valid base64", param="chunk") from None
    if len(data) > MAX_UPLOAD_CHUNK:
        raise BadChunk(f"chunk is larger than {MAX_UPLOAD_CHUNK} bytes", param="chunk", limit=MAX_UPLOAD_CHUNK)
    return data


_UPLOAD_PARAMS = {
    "properties": {
        "upload": {"type": "string", "maxLength": 64},
        "name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME},
        "format": {"enum": list(FORMATS)},
        "on_bad_rows": {"enum": list(BAD_ROW_POLICIES)},
        "offset": {"type": "integer", "minimum": 0},
        "chunk": {"type": "string", "maxLength": _B64_MAX},
        "final": {"type": "boolean"},
    },
    "required": ["chunk"],
}
_STATUS_PARAMS = {
    "properties": {"upload": {"type": "string", "maxLength": 64}},
    "required": ["upload"],
}
_LIST_PARAMS = {
    "properties": {
        "limit": {"type": "integer", "minimum": 1, "maximum": 1000},
        "offset": {"type": "integer", "minimum": 0},
    },
}
_GET_PARAMS = {
    "properties": {"digest": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
    "required": ["digest"],
}


def register_storage_methods(registry: Registry, service: StorageService, uploads: Uploads | None = None,
                             on_stored: Callable[[Any, dict[str, Any]], str | None] | None = None,
                             not_ready: Callable[[], str | None] = lambda: None) -> Uploads:
    """Add the ``dataset_*`` methods to ``registry``; return the upload table
    (start its :meth:`Uploads.run_sweeper` in the daemon's nursery).
    ``on_stored(info, receipt_fields)`` is called for each stored dataset
    (the daemon signs a ``data.store`` receipt there) and may return the
    receipt id, which the upload answer then carries. ``not_ready()`` says
    why this node cannot take uploads yet (None when it can)."""
    uploads = uploads or Uploads(service)

    async def dataset_upload(ctx: CallContext, chunk: str, final: bool = False, upload: str | None = None,
                             offset: int | None = None, name: str | None = None, format: str | None = None,
                             on_bad_rows: str | None = None) -> dict[str, Any]:
        tenant = tenant_of(ctx)
        if upload is None and (reason := not_ready()) is not None:
            raise RpcError(ErrorCode.NODE_NOT_READY, "this node cannot take uploads yet; retry shortly", {"reason": reason})
        now = trio.current_time()
        uploads.sweep(now)
        try:
            data = _decode_chunk(chunk)
            if upload is None:
                if name is None or format is None:
                    raise InvalidDataset("the first chunk of an upload must give name and format",
                                         param="name" if name is None else "format")
                if offset not in (None, 0):
                    raise UploadOffsetMismatch(f"a new upload starts at offset 0, not {offset}", received=0)
                check_name_and_format(name, format)
                current = uploads.start(ctx.peer_id, tenant, name, format, now, on_bad_rows or "fail")
            else:
                for param, value in (("name", name), ("format", format), ("on_bad_rows", on_bad_rows)):
                    if value is not None:
                        raise InvalidDataset("name, format and on_bad_rows belong to the first chunk only", param=param)
                current = uploads.get(upload, ctx.peer_id)
                if offset is not None and offset != current.writer.size:
                    current.last_active = now
                    raise UploadOffsetMismatch(
                        f"this chunk starts at byte {offset} but the node holds {current.writer.size}: "
                        "resend from there", received=current.writer.size)
            current.last_active = now
            try:
                service.catalog.check_quota(tenant, current.writer.size + len(data),
                                            pending=uploads.pending_bytes(tenant, besides=current))
                current.writer.write(data)
            except StorageError:
                uploads.drop(current)
                raise
            if not final:
                return {"upload": current.id, "received": current.writer.size}
            uploads.finish(current)
            info, deduplicated = await service.finish_upload(tenant, current.name, current.format, current.writer,
                                                             on_bad_rows=current.on_bad_rows)
        except StorageError as exc:
            raise _rpc_error(exc) from None
        fields = service.receipt_fields(info)
        receipt = {**fields, "subject": info.digest.hex(), "tenant": info.tenant.hex()}
        if on_stored is not None:
            receipt_id = on_stored(info, fields)
            receipt["id"] = receipt_id
            if receipt_id is not None:
                service.catalog.set_receipt(tenant, info.digest, bytes.fromhex(receipt_id))
                info = service.catalog.require(tenant, info.digest)
        return {**info.to_json(), "receipt": receipt, "deduplicated": deduplicated}

    async def dataset_upload_status(ctx: CallContext, upload: str) -> dict[str, Any]:
        current = uploads.get(upload, ctx.peer_id)
        return {"upload": current.id, "received": current.writer.size, "name": current.name,
                "format": current.format, "on_bad_rows": current.on_bad_rows}

    async def dataset_list(ctx: CallContext, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        tenant = tenant_of(ctx)
        rows = service.catalog.list(tenant, limit=limit, offset=offset)
        return {
            "datasets": [r.to_json() for r in rows],
            "usage_bytes": service.catalog.usage(tenant),
            "quota_bytes": service.catalog.quotas.limit_for(tenant),
        }

    async def dataset_get(ctx: CallContext, digest: str) -> dict[str, Any]:
        tenant = tenant_of(ctx)
        info = service.catalog.get(tenant, bytes.fromhex(digest))
        if info is None:
            raise _rpc_error(DatasetNotFound(f"dataset {digest} is not in your catalog", digest=digest))
        return info.to_json()

    registry.register("dataset_upload", dataset_upload, _UPLOAD_PARAMS,
                      "Upload a dataset in chunks (base64); the final chunk returns its catalog entry.", timeout=600.0)

    async def upload_status(ctx: CallContext, upload: str) -> dict[str, Any]:
        try:
            return await dataset_upload_status(ctx, upload)
        except StorageError as exc:
            raise _rpc_error(exc) from None

    registry.register("dataset_upload_status", upload_status, _STATUS_PARAMS,
                      "Bytes an open upload of the caller's holds (where a reconnecting client resumes).")
    registry.register("dataset_list", dataset_list, _LIST_PARAMS, "The caller's datasets, usage and quota.")
    registry.register("dataset_get", dataset_get, _GET_PARAMS, "One of the caller's datasets by digest.")
    return uploads
