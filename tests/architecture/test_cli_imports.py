"""A networked command loads only what it uses: neither libp2p (most of a
second to import) nor DuckDB. Checked in fresh interpreters, on the modules
a CLI call or a client program imports and on a real ``metanode rpc`` run
against a live node, so an import added anywhere on those paths fails here."""

from __future__ import annotations

import json
import subprocess
import sys

import trio

from node.base.keys import Identity
from tests.support import free_port, running_daemon, write_node_config

HEAVY = ("libp2p", "duckdb")
# What a networked command, or a program using the client library, imports.
CLIENT_MODULES = [
    "node.p2p.client",
    "node.p2p.rpc_client",
    "node.sdk.client",
    "node.consensus.tx",
    "node.app.jobtypes",
    "node.app.rules",
    "node.cli.main",
    "node.cli.rpc",
    "node.cli.analytics",
    "node.cli.receipts",
    "node.cli.members",
    "node.cli.validators",
    "node.cli.console",  # the console talks to its node through the light client, like the rest
    "node.console.server",
    "node.cli.rules",
]


def _loaded_heavy(modules: list[str]) -> list[str]:
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted({{m for m in sys.modules if m.split('.')[0] in {HEAVY!r}}})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_client_modules_load_neither_libp2p_nor_duckdb() -> None:
    for module in CLIENT_MODULES:  # one at a time: each path on its own
        assert _loaded_heavy([module]) == [], f"importing {module} loads {_loaded_heavy([module])[:5]}"


def _imported_by_cli(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "node", *args], capture_output=True, text=True, timeout=60)
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    return done, imported


def _heavy(imported: set[str]) -> list[str]:
    return sorted(m for m in imported if m.split(".")[0] in HEAVY)


def test_rpc_command_that_cannot_connect_loads_no_libp2p() -> None:
    port = free_port()
    done, imported = _imported_by_cli("rpc", "node_status", "--node", f"/ip4/127.0.0.1/tcp/{port}/p2p/{Identity.generate().peer_id}")
    assert done.returncode == 3, done.stderr[-2000:]
    assert f"connection refused at 127.0.0.1:{port} (is the node running?)" in done.stderr
    assert "node.p2p.dialer.connection" in imported  # the path really ran
    assert _heavy(imported) == []


async def test_rpc_command_against_a_live_node_loads_no_libp2p(node_dir) -> None:
    async with running_daemon(write_node_config(node_dir, "a")) as daemon:
        done = await trio.to_thread.run_sync(_imported_by_cli, "rpc", "node_status", "--node", daemon.listen_addrs()[0])
        result, imported = done
        assert result.returncode == 0, result.stderr[-2000:]
        assert json.loads(result.stdout)["peer_id"] == daemon.identity.peer_id
        assert _heavy(imported) == []
