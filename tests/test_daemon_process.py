"""Real daemon processes driven through the CLI, as a user would."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import (
    DaemonProcess,
    free_port,
    node_addr,
    rpc_json,
    run_cli,
    wait_until,
    write_node_config,
)

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "config" / "examples"


def test_two_daemons_from_the_example_configs_find_each_other(tmp_path):
    work = tmp_path / "examples"
    shutil.copytree(EXAMPLES, work, ignore=shutil.ignore_patterns("keys", "data"))
    for name in ("validator", "full-node"):
        done = run_cli("keys", "init", "--insecure-dev-label", f"metanode-example-{name}", "--out", str(work / "keys" / f"{name}.key"))
        assert done.returncode == 0, done.stderr
    validator_id = json.loads(run_cli("keys", "show", str(work / "keys/validator.key"), "--json").stdout)["peer_id"]
    full_id = json.loads(run_cli("keys", "show", str(work / "keys/full-node.key"), "--json").stdout)["peer_id"]
    validator_addr = f"/ip4/127.0.0.1/tcp/7101/p2p/{validator_id}"
    full_addr = f"/ip4/127.0.0.1/tcp/7102/p2p/{full_id}"
    with DaemonProcess(work / "validator.toml") as v, DaemonProcess(work / "full-node.toml") as f:
        def linked() -> bool:
            return any(p["peer_id"] == full_id for p in rpc_json(validator_addr, "net_peers")) and any(
                p["peer_id"] == validator_id for p in rpc_json(full_addr, "net_peers")
            )

        wait_until(linked, 60, what="the two example nodes to peer")
        status = rpc_json(validator_addr, "node_status")
        assert status["peer_id"] == validator_id
        assert status["roles"] == ["validator", "scheduler"]
        assert status["listen_addrs"] == [validator_addr]
        assert rpc_json(full_addr, "node_status")["roles"] == ["validator", "scheduler", "gateway", "processing", "storage"]
        # SIGINT and SIGTERM each stop a daemon cleanly and promptly.
        for proc, signum in ((v, signal.SIGINT), (f, signal.SIGTERM)):
            started = time.monotonic()
            proc.signal(signum)
            assert proc.proc.wait(10) == 0
            assert time.monotonic() - started < 10
        assert "daemon stopped" in v.log() and "Traceback" not in v.log() + f.log()


def test_second_daemon_on_same_data_dir_refuses(tmp_path):
    cfg = write_node_config(tmp_path, "a", port=free_port())
    other = write_node_config(tmp_path, "b", port=free_port())
    # Point b at a's data directory.
    other.write_text(other.read_text().replace('data_dir = "data-b"', 'data_dir = "data-a"').replace('identity_key = "b.key"', 'identity_key = "a.key"'))
    with DaemonProcess(cfg) as first:
        wait_until(lambda: "daemon started" in first.log(), 30, what="first daemon")
        done = subprocess.run([*__import__("tests.support", fromlist=["METANODE"]).METANODE, "daemon", "start", "--config", str(other)], capture_output=True, text=True, timeout=30)
        assert done.returncode == 2
        assert "in use by a running daemon" in done.stderr and "Traceback" not in done.stderr
        assert first.proc.poll() is None


def test_rpc_cli_errors(tmp_path):
    port = free_port()
    cfg = write_node_config(tmp_path, "a", port=port)
    addr = node_addr(port, "a")
    with DaemonProcess(cfg):
        wait_until(lambda: rpc_json(addr, "node_status"), 30, what="daemon")
        bad_param = run_cli("rpc", "node_status", '{"x": 1}', "--node", addr)
        assert bad_param.returncode == 1
        assert json.loads(bad_param.stderr)["data"] == {"param": "x", "reason": "unknown parameter"}
        not_json = run_cli("rpc", "node_status", "{nope", "--node", addr)
        assert not_json.returncode == 2 and "not valid JSON" in not_json.stderr
        methods = rpc_json(addr, "rpc_methods")
        assert {m["name"] for m in methods} >= {"node_status", "net_peers", "rpc_methods"}
    unreachable = run_cli("rpc", "node_status", "--node", addr, "--timeout", "5")
    assert unreachable.returncode == 3 and "connection refused at 127.0.0.1:" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr
    bad_addr = run_cli("rpc", "node_status", "--node", "/ip4/127.0.0.1/tcp/1")
    assert bad_addr.returncode == 2 and "/p2p/" in bad_addr.stderr


def test_frozen_peer_is_detected_and_dropped(tmp_path):
    """py-libp2p never notices a peer stopped with SIGSTOP; keepalive must,
    within keepalive_interval + keepalive_timeout (here 1 + 2 s)."""
    port_a, port_b = free_port(), free_port()
    fast = {"keepalive_interval": 1.0, "keepalive_timeout": 2.0}
    cfg_a = write_node_config(tmp_path, "a", port=port_a, network=fast)
    cfg_b = write_node_config(tmp_path, "b", port=port_b, peers=[node_addr(port_a, "a")], network=fast)
    addr_a = node_addr(port_a, "a")
    b_id = node_addr(port_b, "b").rsplit("/", 1)[1]
    with DaemonProcess(cfg_a), DaemonProcess(cfg_b) as b:
        wait_until(lambda: any(p["peer_id"] == b_id for p in rpc_json(addr_a, "net_peers")), 60, what="b to connect")
        b.signal(signal.SIGSTOP)
        try:
            wait_until(lambda: all(p["peer_id"] != b_id for p in rpc_json(addr_a, "net_peers")), 30, what="a to drop frozen b")
        finally:
            b.signal(signal.SIGCONT)
        # b comes back by itself: persistent peers are redialled.
        wait_until(lambda: any(p["peer_id"] == b_id for p in rpc_json(addr_a, "net_peers")), 60, what="b to reconnect")


def test_libp2p_logs_go_through_structlog_json(tmp_path):
    port = free_port()
    # A persistent peer nobody listens on makes libp2p log dial errors.
    cfg = write_node_config(tmp_path, "a", port=port, peers=[node_addr(free_port(), "ghost")])
    with DaemonProcess(cfg, "--log-format", "json") as proc:
        wait_until(lambda: '"logger": "libp2p' in proc.log(), 30, what="a libp2p log record")
    lines = [line for line in proc.log().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is JSON: nothing bypasses structlog
    assert any(r["logger"].startswith("libp2p") for r in records)
    assert any(r["event"] == "daemon started" for r in records)


@pytest.mark.parametrize(
    "mutate, expect",
    [
        (lambda t: t + "\n[network]\nbogus = 1\n", None),  # duplicate table: TOML error
        (lambda t: t.replace("[network]", "[network]\nbogus_key = 1"), "[network] unknown key 'bogus_key'"),
        (lambda t: t.replace("keepalive_interval = 1.0", 'keepalive_interval = "fast"'), "[network] keepalive_interval: expected a number, got str 'fast'"),
        (lambda t: t.replace("/ip4/127.0.0.1/tcp/0", "/ip4/999.1.1.1/tcp/0"), "[network] listen[0]: expected a multiaddr"),
        (lambda t: t.replace("/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0"), "[network] listen[0]: expected a TCP multiaddr"),
        (lambda t: t.replace('roles = []', 'roles = ["miner"]'), "[node] roles[0]: expected one of ['validator', 'scheduler', 'gateway', 'processing', 'storage'], got 'miner'"),
        (lambda t: t.replace('identity_key = "a.key"', 'identity_key = "missing.key"'), "[node] identity_key:"),
        (lambda t: t.replace("[network]", "[netwrk]"), "unknown section [netwrk]"),
        (lambda t: t.replace('moniker = "a"', "moniker = 5"), "[node] moniker: expected a string, got int 5"),
    ],
)
def test_config_errors_exit_2_naming_file_key_and_expectation(tmp_path, mutate, expect):
    cfg = write_node_config(tmp_path, "a")
    cfg.write_text(mutate(cfg.read_text()))
    done = run_cli("daemon", "start", "--config", str(cfg), timeout=30)
    assert done.returncode == 2
    assert str(cfg) in done.stderr
    if expect:
        assert expect in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_unreadable_key_file_is_a_config_error(tmp_path):
    cfg = write_node_config(tmp_path, "a")
    os.chmod(tmp_path / "a.key", 0o644)
    done = run_cli("daemon", "start", "--config", str(cfg), timeout=30)
    assert done.returncode == 2 and "identity_key" in done.stderr and "chmod 600" in done.stderr


def test_listen_port_in_use_is_reported(tmp_path):
    port = free_port()
    first = write_node_config(tmp_path, "a", port=port)
    second = write_node_config(tmp_path, "b", port=port)
    with DaemonProcess(first) as proc:
        wait_until(lambda: "daemon started" in proc.log(), 30, what="first daemon")
        done = run_cli("daemon", "start", "--config", str(second), timeout=30)
    assert done.returncode == 2 and "listen" in done.stderr and "Traceback" not in done.stderr


def test_python_dash_m_node_is_metanode():
    via_module = run_cli("--help")
    via_script = subprocess.run([str(Path(os.sys.executable).parent / "metanode"), "--help"], capture_output=True, text=True)
    assert via_module.returncode == via_script.returncode == 0
    assert via_module.stdout == via_script.stdout


def test_keys_cli(tmp_path):
    key = tmp_path / "k.key"
    made = run_cli("keys", "init", "--out", str(key))
    assert made.returncode == 0 and oct(key.stat().st_mode & 0o777) == "0o600"
    again = run_cli("keys", "init", "--out", str(key))
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    shown = json.loads(run_cli("keys", "show", str(key), "--json").stdout)
    assert shown["peer_id"].startswith("12D3KooW") and len(shown["public_key"]) == 64


def test_a_chain_store_of_an_older_format_is_refused_naming_the_data_dir(tmp_path):
    """A data directory whose blocks predate the header's genesis hash (chain
    store schema 1): the daemon refuses to start with one line naming the
    database file and what to do, not a traceback."""
    from node.base.db import DB_FILENAME, open_node_db
    from node.base.keys import Identity
    from node.consensus.genesis import Genesis
    from node.consensus.store import SCHEMA_VERSION, ChainStore

    identity = Identity.from_label("test-node-a")
    genesis = tmp_path / "genesis.toml"
    Genesis(chain_id="metanode-old", genesis_time_ms=1_767_225_600_000, validators=(identity.public_key,)).write(genesis)
    cfg = write_node_config(tmp_path, "a", identity=identity, roles=["validator"], genesis=genesis)
    conn = open_node_db(tmp_path / "data-a")
    ChainStore(conn)
    conn.execute("UPDATE chain_meta SET value = '1'::BLOB WHERE key = 'schema_version'")
    conn.close()
    done = run_cli("daemon", "start", "--config", str(cfg), timeout=60)
    assert done.returncode != 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert str(tmp_path / "data-a" / DB_FILENAME) in done.stderr and f"schema version 1 is not {SCHEMA_VERSION}" in done.stderr
    assert f"move the data directory {tmp_path / 'data-a'} aside" in done.stderr
