"""Test helpers shared by every test package: node configs and in-process daemons."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from node.keys import Identity


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def write_node_config(
    directory: Path,
    name: str,
    *,
    port: int = 0,
    peers: list[str] = (),  # type: ignore[assignment]
    roles: list[str] = (),  # type: ignore[assignment]
    identity: Identity | None = None,
    network: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    extra: str = "",
) -> Path:
    """Write a key and a config for node ``name``; return the config path."""
    directory.mkdir(parents=True, exist_ok=True)
    identity = identity or Identity.from_label(f"test-node-{name}")
    key = directory / f"{name}.key"
    if not key.exists():
        identity.write(key)
    net = {
        "listen": [f"/ip4/127.0.0.1/tcp/{port}"],
        "persistent_peers": list(peers),
        "keepalive_interval": 1.0,
        "keepalive_timeout": 2.0,
        "dial_timeout": 2.0,
        "redial_backoff_base": 0.1,
        "redial_backoff_cap": 1.0,
        **(network or {}),
    }
    lines = [
        "[node]",
        f'moniker = "{name}"',
        f'identity_key = "{key.name}"',
        f'data_dir = "data-{name}"',
        f"roles = {_toml_value(list(roles))}",
        "",
        "[network]",
        *(f"{k} = {_toml_value(v)}" for k, v in net.items()),
    ]
    if limits:
        lines += ["", "[limits]", *(f"{k} = {_toml_value(v)}" for k, v in limits.items())]
    path = directory / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


@asynccontextmanager
async def running_daemon(config_path: Path, setup: Any = None) -> AsyncIterator[Any]:
    """An in-process daemon from ``config_path``, stopped on exit."""
    from node.config import load_config
    from node.daemon import Daemon

    daemon = Daemon(load_config(config_path))
    if setup is not None:
        setup(daemon)
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        try:
            yield daemon
        finally:
            daemon.stop()
