"""Supervision of the daemon's long-lived tasks: a failure that ends the daemon says so, once.

Every long-lived task (peer management, metrics, each role's service, the
data directory watch) runs under :meth:`Supervisor.task`, which remembers
the first one that failed. When the daemon's nursery ends with an error,
:func:`daemon_failure` turns what escaped (trio wraps it in exception groups,
with the other tasks' cancellations) into one :class:`UserError`: a failure
of the data directory (disk full, a write refused, a broken file, the lock
lost) is a :class:`DataDirError` naming the path and cause; anything else is
a :class:`DaemonFailed` naming the task and the exception. Once serving, the
daemon logs it as one error line (no traceback, except for an unexpected
exception: a bug) and marks it ``reported``; the CLI then only exits with its
code (node/cli/daemon.py), else it prints the one line itself.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from node.base.errors import EXIT_RUNTIME, DataDirError, UserError
from node.base.faults import data_dir_failure


class DaemonFailed(UserError):
    """A long-lived task of the daemon failed unexpectedly (a bug): named, with the exception."""

    exit_code = EXIT_RUNTIME


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside nested exception groups, in order."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


def only_cancellation(exc: BaseException) -> bool:
    """True when ``exc`` holds nothing but cancellations (a normal stop)."""
    return all(isinstance(leaf, trio.Cancelled) for leaf in leaves(exc))


class Supervisor:
    """Wraps the daemon's long-lived tasks to name the one whose failure ends the daemon."""

    def __init__(self) -> None:
        self.failed: tuple[str, BaseException] | None = None

    def _record(self, name: str, exc: BaseException) -> None:
        if self.failed is None and not only_cancellation(exc):
            self.failed = (name, exc)

    def task(self, name: str, run: Callable[..., Awaitable[Any]], *args: Any) -> Callable[..., Awaitable[Any]]:
        """``run`` for ``nursery.start`` (it gets ``task_status``)."""

        async def supervised(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> Any:
            try:
                return await run(*args, task_status=task_status)
            except BaseException as exc:
                self._record(name, exc)
                raise

        return supervised

    def loop(self, name: str, run: Callable[..., Awaitable[Any]], *args: Any) -> Callable[[], Awaitable[Any]]:
        """``run`` for ``nursery.start_soon`` (no ``task_status``)."""

        async def supervised() -> Any:
            try:
                return await run(*args)
            except BaseException as exc:
                self._record(name, exc)
                raise

        return supervised


def daemon_failure(exc: BaseException, data_dir: Path, failed_task: str | None = None) -> tuple[UserError, bool] | None:
    """What ended the daemon, as one UserError, and whether it is unexpected
    (a bug, worth its traceback); None for a normal stop (only cancellations,
    or Ctrl-C), which the caller re-raises."""
    found = [leaf for leaf in leaves(exc) if not isinstance(leaf, (trio.Cancelled, KeyboardInterrupt, SystemExit))]
    if not found:
        return None
    for leaf in found:  # the data directory's failure first: it explains the rest
        fault = data_dir_failure(leaf, data_dir)
        if fault is not None:
            return fault, False
    for leaf in found:
        if isinstance(leaf, UserError):
            return leaf, False
    leaf = found[0]
    where = f"task {failed_task!r}" if failed_task else "the daemon"
    return DaemonFailed(f"{where} failed: {type(leaf).__name__}: {str(leaf)[:300]}"), True


def lock_lost(lock_path: Path, lock_fd: int | None) -> str | None:
    """Why the data directory lock no longer protects us, or None while it does:
    the lock file was removed or replaced (another daemon could now lock the
    same directory and sign with the same key), or the directory is gone."""
    if lock_fd is None:
        return None
    try:
        held = os.fstat(lock_fd)
        current = os.stat(lock_path)
    except FileNotFoundError:
        return "the lock file was removed (was the data directory deleted?)"
    except OSError as exc:
        return f"the lock file cannot be checked: {exc.strerror or exc}"
    if (held.st_dev, held.st_ino) != (current.st_dev, current.st_ino):
        return "the lock file was replaced by another file"
    return None


def data_dir_lost_error(lock_path: Path, why: str) -> DataDirError:
    return DataDirError(f"{lock_path}: data directory lock lost: {why}; stopped so that no second daemon "
                        "signs with this key over the same directory")


class StartedProxy:
    """A ``task_status`` that remembers whether the daemon got as far as serving."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.done = False

    def started(self, value: Any = None) -> None:
        self.done = True
        self.inner.started(value)
