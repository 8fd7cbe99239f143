"""Storage errors, each with a stable JSON-RPC code (1200 range) and a wire code.

``code`` is what ``dataset_*`` RPC methods return; ``wire`` is the error
string of the blob protocol's header frame.
"""

from __future__ import annotations

from typing import Any

STORAGE_ERROR = 1200
UPLOAD_NOT_FOUND = 1201
TOO_MANY_UPLOADS = 1202
QUOTA_EXCEEDED = 1203
BLOB_TOO_LARGE = 1204
DATASET_UNREADABLE = 1205
DATASET_NOT_FOUND = 1206
REPLICATION_FAILED = 1207
BAD_CHUNK = 1208
INVALID_DATASET = 1209
BLOB_CORRUPT = 1210
DIGEST_MISMATCH = 1211
BLOB_NOT_FOUND = 1212
NODE_NOT_READY = 1213  # the node cannot take uploads yet (not registered on chain)


class StorageError(Exception):
    """Base of storage failures: a message plus a ``data`` dict for callers."""

    code = STORAGE_ERROR
    wire = "storage_error"

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def to_data(self) -> dict[str, Any]:
        return {"reason": self.message, **self.data}


class BlobNotFound(StorageError):
    code, wire = BLOB_NOT_FOUND, "not_found"


class BlobCorrupt(StorageError):
    code, wire = BLOB_CORRUPT, "corrupt"


class BlobTooLarge(StorageError):
    code, wire = BLOB_TOO_LARGE, "too_large"


class DigestMismatch(StorageError):
    code, wire = DIGEST_MISMATCH, "digest_mismatch"


class QuotaExceeded(StorageError):
    """A tenant would go over its byte quota: ``used``, ``limit``, ``requested``."""

    code, wire = QUOTA_EXCEEDED, "quota_exceeded"


class DatasetUnreadable(StorageError):
    """DuckDB could not read the content as the declared format."""

    code, wire = DATASET_UNREADABLE, "unreadable"


class InvalidDataset(StorageError):
    code, wire = INVALID_DATASET, "invalid"


class DatasetNotFound(StorageError):
    code, wire = DATASET_NOT_FOUND, "not_found"


class ReplicationFailed(StorageError):
    """Fewer nodes than required hold the blob (``held_by``, ``required``)."""

    code, wire = REPLICATION_FAILED, "replication_failed"


class UploadNotFound(StorageError):
    code, wire = UPLOAD_NOT_FOUND, "upload_not_found"


class TooManyUploads(StorageError):
    code, wire = TOO_MANY_UPLOADS, "too_many_uploads"


class BadChunk(StorageError):
    code, wire = BAD_CHUNK, "bad_chunk"


class BlobTransferError(StorageError):
    """A peer could not give or take a blob (refused, reset, bad data)."""

    wire = "transfer_failed"
