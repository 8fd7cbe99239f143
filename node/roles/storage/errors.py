"""Storage errors, each with its JSON-RPC code (the 1200 range of
node/base/errors.py) and a wire code.

``code`` is what ``dataset_*`` RPC methods return; ``wire`` is the error
string of the blob protocol's header frame.
"""

from __future__ import annotations

from typing import Any

from node.base.errors import ErrorCode


class StorageError(Exception):
    """Base of storage failures: a message plus a ``data`` dict for callers."""

    code = ErrorCode.STORAGE_ERROR
    wire = "storage_error"

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def to_data(self) -> dict[str, Any]:
        return {"reason": self.message, **self.data}


class BlobNotFound(StorageError):
    code, wire = ErrorCode.BLOB_NOT_FOUND, "not_found"


class BlobCorrupt(StorageError):
    code, wire = ErrorCode.BLOB_CORRUPT, "corrupt"


class BlobTooLarge(StorageError):
    code, wire = ErrorCode.BLOB_TOO_LARGE, "too_large"


class DigestMismatch(StorageError):
    code, wire = ErrorCode.DIGEST_MISMATCH, "digest_mismatch"


class QuotaExceeded(StorageError):
    """A tenant would go over its byte quota: ``used``, ``limit``, ``requested``."""

    code, wire = ErrorCode.STORAGE_QUOTA_EXCEEDED, "quota_exceeded"


class DatasetUnreadable(StorageError):
    """DuckDB could not read the content as the declared format."""

    code, wire = ErrorCode.DATASET_UNREADABLE, "unreadable"


class DatasetBadRows(StorageError):
    """Rows that do not fit the dataset's columns: ``bad_rows`` (the first
    few ``{"line", "reason"}``) and ``count`` (all of them)."""

    code, wire = ErrorCode.DATASET_BAD_ROWS, "bad_rows"


class UploadOffsetMismatch(StorageError):
    """A chunk's ``offset`` is not what the server has: ``received``."""

    code, wire = ErrorCode.UPLOAD_OFFSET_MISMATCH, "offset_mismatch"


class InvalidDataset(StorageError):
    code, wire = ErrorCode.INVALID_DATASET, "invalid"


class DatasetNotFound(StorageError):
    code, wire = ErrorCode.DATASET_NOT_FOUND, "not_found"


class ReplicationFailed(StorageError):
    """Fewer nodes than required hold the blob (``held_by``, ``required``)."""

    code, wire = ErrorCode.REPLICATION_FAILED, "replication_failed"


class UploadNotFound(StorageError):
    code, wire = ErrorCode.UPLOAD_NOT_FOUND, "upload_not_found"


class TooManyUploads(StorageError):
    code, wire = ErrorCode.TOO_MANY_UPLOADS, "too_many_uploads"


class BadChunk(StorageError):
    code, wire = ErrorCode.BAD_CHUNK, "bad_chunk"


class BlobTransferError(StorageError):
    """A peer could not give or take a blob (refused, reset, bad data)."""

    wire = "transfer_failed"
