"""Which failures are the data directory's: disk full, a refused write, a broken file.

A node that cannot record what it does must stop rather than act on it (a
validator that signs what it could not make durable may sign twice). Such a
stop is not a bug: it gets one line naming the path and the cause and the
exit code :data:`node.base.errors.EXIT_DATA_DIR`, never a traceback. This
module tells those failures apart from the rest, for the places that write
(node/consensus/store.py, node/consensus/safety.py) and for the daemon's
supervisor (node/roles/supervise.py), which sees whatever escaped.
"""

from __future__ import annotations

import errno
from pathlib import Path

import duckdb

from node.base.errors import DataDirError

# Errors of the disk itself, whatever the path: never a property of the input.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})
# Errors that are the data directory's when they name a path inside it.
PATH_ERRNOS = DISK_ERRNOS | {errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENOTEMPTY,
                                 errno.EEXIST, errno.ELOOP}
# How DuckDB words an OS error of its files (its exceptions carry no errno).
_DUCKDB_DISK_WORDS = ("No space left on device", "Disk quota exceeded", "Read-only file system",
                      "Input/output error", "Could not write file", "Could not read from file",
                      "Cannot open file", "Permission denied", "Could not truncate file", "Could not fsync")


def _inside(path: object, directory: Path | None) -> bool:
    if directory is None or not isinstance(path, (str, bytes)):
        return False
    try:
        resolved = Path(path.decode() if isinstance(path, bytes) else path).resolve()
        return resolved == directory.resolve() or directory.resolve() in resolved.parents
    except (OSError, ValueError):
        return False


def data_dir_failure(exc: BaseException, data_dir: Path | None = None, *, db_file: Path | str | None = None) -> DataDirError | None:
    """``exc`` as a :class:`DataDirError` naming the path and the cause, or
    None when it is not a failure of the data directory (``data_dir``; a
    DuckDB error is the database's, ``db_file``)."""
    if isinstance(exc, DataDirError):
        return exc
    if isinstance(exc, OSError) and exc.errno is not None:
        filename = exc.filename if exc.filename is not None else None
        if exc.errno in DISK_ERRNOS or (exc.errno in PATH_ERRNOS and _inside(filename, data_dir)):
            where = filename if isinstance(filename, str) else str(data_dir or "data directory")
            return DataDirError(f"{where}: {exc.strerror or exc} (errno {exc.errno})")
        return None
    if isinstance(exc, duckdb.Error):
        text = str(exc)
        if any(words in text for words in _DUCKDB_DISK_WORDS) or isinstance(exc, (duckdb.IOException, duckdb.FatalException)):
            database = db_file or (data_dir / "node.duckdb" if data_dir is not None else "node database")
            return DataDirError(f"{database}: {text.splitlines()[0][:300]}")
    return None
