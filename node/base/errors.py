"""Errors that reach a user, with the exit code DESIGN.md gives each kind."""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2  # usage or config error
EXIT_UNREACHABLE = 3  # could not reach a node


class UserError(Exception):
    """A failure to report as one clear line and an exit code, never a traceback."""

    exit_code = EXIT_RUNTIME

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(UserError):
    """Bad configuration: names the file, the key and what was expected."""

    exit_code = EXIT_USAGE


class UnreachableError(UserError):
    """A node could not be reached (dial failed, timed out, refused)."""

    exit_code = EXIT_UNREACHABLE


def sole_exception(exc: BaseException) -> BaseException:
    """The one leaf of nested exception groups (trio wraps errors raised in
    nursery bodies), or ``exc`` itself when there are several or none."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
