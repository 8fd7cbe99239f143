"""``metanode daemon``: run a node."""

from __future__ import annotations

import click

from node.base.config import LOG_FORMATS, LOG_LEVELS, load_config


@click.group()
def daemon() -> None:
    """Run a metanode daemon."""


@daemon.command("start")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="Node config file (TOML).")
@click.option("--log-format", type=click.Choice(LOG_FORMATS), default=None, help="Override [log] format.")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default=None, help="Override [log] level.")
def start(config_path: str, log_format: str | None, log_level: str | None) -> None:
    """Start a node in the foreground; SIGINT or SIGTERM stops it cleanly."""
    config = load_config(config_path)
    import trio

    from node.base.logging import configure_logging
    from node.roles.daemon import Daemon, run_until_signalled  # imports libp2p: only when starting

    configure_logging(log_level or config.log["level"], log_format or config.log["format"])
    trio.run(run_until_signalled, Daemon(config))
