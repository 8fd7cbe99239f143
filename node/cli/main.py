"""The ``metanode`` command line: parses, calls, prints.

Each package owns its commands (``node/<package>/commands.py``); this module
only composes them. Groups load lazily so that ``metanode keys show`` does
not pay for importing libp2p or DuckDB.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

import click

from node import __version__
from node.base.errors import EXIT_USAGE, UserError

# command name -> "module:attribute" of a click command or group
_LAZY_COMMANDS = {
    "keys": "node.cli.keys:keys",
    "daemon": "node.cli.daemon:daemon",
    "rpc": "node.cli.rpc:rpc",
    "cage": "node.cli.cage:cage",
    "receipt": "node.cli.receipts:receipt",
    "audit": "node.cli.audit:audit",
    "security": "node.cli.security:security",
    "genesis": "node.cli.genesis:genesis",
    "analytics": "node.cli.analytics:analytics",
    "testnet": "node.cli.testnet:testnet",
    "mesh": "node.cli.mesh:mesh",
    "demo": "node.cli.demo:demo",
    "members": "node.cli.members:members",
    "validators": "node.cli.validators:validators",
    "console": "node.cli.console:console",
    "rules": "node.cli.rules:rules",
    "service": "node.cli.services:service",
    "container": "node.cli.services:container",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(super().list_commands(ctx))
        names.update(n for n, target in _LAZY_COMMANDS.items() if _available(target))
        return sorted(names)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is not None:
            return command
        target = _LAZY_COMMANDS.get(name)
        if target is None or not _available(target):
            return None
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)


def _available(target: str) -> bool:
    module_name = target.split(":")[0]
    return importlib.util.find_spec(module_name) is not None if _parent_ok(module_name) else False


def _parent_ok(module_name: str) -> bool:
    parent = module_name.rpartition(".")[0]
    return not parent or importlib.util.find_spec(parent) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="metanode")
def cli() -> None:
    """metanode: verifiable multi-party analytics over a BFT peer-to-peer network."""


def _user_error(exc: BaseException) -> UserError | None:
    """The UserError inside ``exc``, also when trio wrapped it in exception groups."""
    if isinstance(exc, UserError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _user_error(inner)
            if found is not None:
                return found
    return None


def main(argv: list[str] | None = None) -> Any:
    """Entry point: run the CLI, turning user errors into one line and an exit code."""
    try:
        return cli.main(args=argv, prog_name="metanode", standalone_mode=False)
    except (UserError, BaseExceptionGroup) as exc:
        error = _user_error(exc)
        if error is None:
            raise
        click.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code if exc.exit_code else EXIT_USAGE)
    except KeyboardInterrupt:
        sys.exit(130)
