"""``metanode daemon``: run a node."""

from __future__ import annotations

import sys

import click

from node.base.config import LOG_FORMATS, LOG_LEVELS, load_config
from node.base.errors import UserError


@click.group()
def daemon() -> None:
    """Run a metanode daemon."""


def _reported(exc: BaseException) -> UserError | None:
    """The failure inside ``exc`` (trio wraps it in exception groups) that the
    daemon already logged as its one error line."""
    if isinstance(exc, UserError):
        return exc if exc.reported else None
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _reported(inner)
            if found is not None:
                return found
    return None


@daemon.command("start")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="Node config file (TOML).")
@click.option("--log-format", type=click.Choice(LOG_FORMATS), default=None, help="Override [log] format.")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default=None, help="Override [log] level.")
@click.option("--unsafe-sign-immediately", is_flag=True, default=False,
              help="A validator started without its safety state (wiped data directory) signs at once instead of "
                   "syncing and watching [consensus] double_sign_check_height heights first. Risks a double sign; "
                   "a new chain at height 0 never needs it.")
def start(config_path: str, log_format: str | None, log_level: str | None, unsafe_sign_immediately: bool) -> None:
    """Start a node in the foreground; SIGINT or SIGTERM stops it cleanly.

    Exit codes: 0 stopped by a signal; 2 config or usage error (also: data
    directory in use, listen address taken); 5 the data directory failed
    (disk full, unwritable or broken, lock lost), after the node stopped
    voting, with one error line naming the path and the cause; 1 anything else.
    """
    config = load_config(config_path)
    if unsafe_sign_immediately:
        config.consensus["unsafe_sign_immediately"] = True
    import trio

    from node.base.logging import configure_logging
    from node.roles.daemon import Daemon, run_until_signalled  # imports libp2p: only when starting

    configure_logging(log_level or config.log["level"], log_format or config.log["format"])
    try:
        trio.run(run_until_signalled, Daemon(config))
    except (UserError, BaseExceptionGroup) as exc:
        reported = _reported(exc)
        if reported is None:
            raise  # the CLI prints it as one line (node/cli/main.py)
        sys.exit(reported.exit_code)
