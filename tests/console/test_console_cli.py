"""``metanode console`` as a user runs it: one-line errors with their exit codes, and a
real console process (port 0, --no-browser) that prints a URL whose token logs in."""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import time
from pathlib import Path

import trio

from node.base.keys import Identity
from node.consensus.genesis import Genesis
from tests.support import METANODE, free_port, run_cli, running_daemon, write_node_config


def _nowhere() -> str:
    return f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/{Identity.generate().peer_id}"


def _key(tmp_path: Path) -> Path:
    key = tmp_path / "tenant.key"
    Identity.generate().write(key)
    return key


def test_usage_errors_are_one_line_with_exit_2(tmp_path: Path) -> None:
    key = _key(tmp_path)
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key")
    cases = [
        ((), "Missing option '--node'"),
        (("--node", _nowhere(), "--key", str(tmp_path / "missing.key")), "--key"),
        (("--node", _nowhere(), "--key", str(garbage)), "--key"),
        (("--node", "/ip4/127.0.0.1/tcp/1", "--key", str(key)), "expected /ip4/HOST/tcp/PORT/p2p/PEER_ID"),
        (("--node", _nowhere(), "--key", str(key), "--listen", "127.0.0.1"), "expected HOST:PORT"),
        (("--node", _nowhere(), "--key", str(key), "--listen", "example.com:80"), "must be an IP address"),
        (("--node", _nowhere(), "--key", str(key), "--listen", "0.0.0.0:0"), "--allow-remote"),
        (("--node", _nowhere(), "--key", str(key), "--genesis", str(tmp_path / "nope.toml")), "--genesis"),
    ]
    for args, message in cases:
        done = run_cli("console", "--no-browser", *args, timeout=60)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr


def test_a_port_in_use_and_an_unreachable_node_are_named(tmp_path: Path) -> None:
    key = _key(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("console", "--no-browser", "--node", _nowhere(), "--key", str(key), "--listen", f"127.0.0.1:{port}")
    assert done.returncode == 2, done.stderr
    assert f"port {port} is in use" in done.stderr and done.stderr.count("\n") == 1
    done = run_cli("console", "--no-browser", "--node", _nowhere(), "--key", str(key), "--listen", "127.0.0.1:0")
    assert done.returncode == 3, done.stderr
    assert "connection refused" in done.stderr and "Traceback" not in done.stderr


async def test_a_console_process_prints_a_url_whose_token_logs_in(node_dir: Path) -> None:
    key = _key(node_dir)
    genesis = node_dir / "genesis.toml"
    Genesis(chain_id="console-cli", genesis_time_ms=time.time_ns() // 1_000_000 - 1000,
            validators=(Identity.from_label("test-node-cli-console").public_key,), block_period_ms=200).write(genesis)
    async with running_daemon(write_node_config(node_dir, "cli-console", roles=["validator"], genesis=genesis)) as daemon:
        proc = subprocess.Popen([*METANODE, "console", "--no-browser", "--node", daemon.listen_addrs()[0], "--key", str(key),
                                 "--listen", "127.0.0.1:0", "--genesis", str(genesis)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            def read_url() -> str:
                assert proc.stdout is not None
                for line in proc.stdout:
                    if "open: " in line:
                        return line.split("open: ", 1)[1].strip()
                raise AssertionError(f"no URL printed; stderr: {proc.stderr.read() if proc.stderr else ''}")

            url = await trio.to_thread.run_sync(read_url)
            assert url.startswith("http://127.0.0.1:") and "?token=" in url
            port = int(url.split(":")[2].split("/")[0])
            assert port != 0

            def open_url() -> tuple[int, str | None]:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request("GET", url.split(str(port), 1)[1])
                response = conn.getresponse()
                conn.close()
                return response.status, response.getheader("set-cookie")

            status, cookie = await trio.to_thread.run_sync(open_url)
            assert status == 303 and cookie is not None and cookie.startswith("metanode_console=")
        finally:
            proc.send_signal(signal.SIGINT)
            code = await trio.to_thread.run_sync(lambda: proc.wait(30))
    assert code == 0


async def test_a_node_without_a_chain_or_of_another_chain_is_named(node_dir: Path) -> None:
    key = _key(node_dir)
    other = node_dir / "other.toml"
    Genesis(chain_id="another-chain", genesis_time_ms=1, validators=(Identity.generate().public_key,)).write(other)
    async with running_daemon(write_node_config(node_dir, "no-chain")) as daemon:
        done = await trio.to_thread.run_sync(lambda: run_cli(
            "console", "--no-browser", "--node", daemon.listen_addrs()[0], "--key", str(key), "--listen", "127.0.0.1:0"))
        assert done.returncode == 1 and "keeps no chain" in done.stderr and "Traceback" not in done.stderr, done.stderr
    genesis = node_dir / "genesis.toml"
    Genesis(chain_id="console-cli", genesis_time_ms=time.time_ns() // 1_000_000 - 1000,
            validators=(Identity.from_label("test-node-chain").public_key,), block_period_ms=200).write(genesis)
    async with running_daemon(write_node_config(node_dir, "chain", roles=["validator"], genesis=genesis)) as daemon:
        done = await trio.to_thread.run_sync(lambda: run_cli(
            "console", "--no-browser", "--node", daemon.listen_addrs()[0], "--key", str(key), "--listen", "127.0.0.1:0",
            "--genesis", str(other)))
        assert done.returncode == 2 and "follows chain 'console-cli'" in done.stderr, done.stderr


def test_demo_keep_ends_with_the_console_command_that_works(tmp_path: Path) -> None:
    """``metanode demo --keep`` ends by printing the console command for its cluster; run as printed
    (plus --no-browser and a free port), it serves that cluster with the demo's genesis."""
    import json
    import shlex

    directory = tmp_path / "demo"
    try:
        done = run_cli("demo", "--nodes", "1", "--keep", "--dir", str(directory), timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        command = done.stdout.rstrip("\n").splitlines()[-1].strip()
        assert command.startswith("metanode console --node /ip4/127.0.0.1/tcp/")
        args = shlex.split(command)[1:]
        assert args[args.index("--genesis") + 1] == str(directory / "genesis.toml")
        proc = subprocess.Popen([*METANODE, *args, "--no-browser", "--listen", "127.0.0.1:0"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            url = next(line.split("open: ", 1)[1].strip() for line in proc.stdout if "open: " in line)
            port = int(url.split(":")[2].split("/")[0])
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", url.split(str(port), 1)[1])
            response = conn.getresponse()
            response.read()
            cookie = (response.getheader("set-cookie") or "").split(";")[0]
            conn.request("GET", "/api/session", headers={"Cookie": cookie})
            session = json.loads(conn.getresponse().read())
            conn.close()
            assert session["chain_id"] == "metanode-testnet" and session["genesis_file"] == str(directory / "genesis.toml")
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
    finally:
        run_cli("testnet", "down", "--dir", str(directory))
