"""Test helpers shared by every test package: node configs and in-process daemons."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from node.base.keys import Identity


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
    service_policy: str | None = "none",
    debug_rpc: bool = False,
    genesis: Path | None = None,
    extra: str = "",
) -> Path:
    """Write a key and a config for node ``name``; return the config path.

    ``service_policy`` None keeps the daemon's default (confined under its
    roles' policy); in-process daemons must stay unconfined, or the test
    process itself would be confined."""
    directory.mkdir(parents=True, exist_ok=True)
    identity = identity or Identity.from_label(f"test-node-{name}")
    key = directory / f"{name}.key"
    if not key.exists():
        identity.write(key)
    net = {
        "listen": [f"/ip4/127.0.0.1/tcp/{port}"],
        "persistent_peers": list(peers),
        # Generous enough that a test client on a loaded 2-core CI machine still answers
        # pings in time; the keepalive test itself asks for 1 + 2 s.
        "keepalive_interval": 1.0,
        "keepalive_timeout": 5.0,
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
    if genesis is not None:
        lines += ["", "[consensus]", f'genesis = "{genesis}"']
    if service_policy is not None:
        lines += ["", "[cage]", f'service_policy = "{service_policy}"']
    if debug_rpc:
        lines += ["", "[debug]", "enable_debug_rpc = true"]
    path = directory / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


@asynccontextmanager
async def running_daemon(config_path: Path, setup: Any = None) -> AsyncIterator[Any]:
    """An in-process daemon from ``config_path``, stopped on exit."""
    from node.base.config import load_config
    from node.roles.daemon import Daemon

    daemon = Daemon(load_config(config_path))
    if setup is not None:
        setup(daemon)
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        try:
            yield daemon
        finally:
            daemon.stop()


# -- process-level helpers ----------------------------------------------------
import json  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

METANODE = [sys.executable, "-m", "node"]


def run_cli(*args: str, timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``metanode ARGS`` to completion, capturing its output."""
    return subprocess.run([*METANODE, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


class DaemonProcess:
    """A real ``metanode daemon start`` process."""

    def __init__(self, config: Path, *extra: str, log_path: Path | None = None) -> None:
        self.config = config
        self.log_path = log_path or config.with_suffix(".log")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [*METANODE, "daemon", "start", "--config", str(config), *extra],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> "DaemonProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def rpc_json(node: str, method: str, params: object = None, timeout: float = 30) -> object:
    """Call a node through the real CLI and return the parsed result."""
    args = ["rpc", method] + ([json.dumps(params)] if params is not None else []) + ["--node", node]
    done = run_cli(*args, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"metanode rpc {method} exited {done.returncode}: {done.stderr.strip()}")
    return json.loads(done.stdout)


def wait_until(predicate, timeout: float, interval: float = 0.25, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the node may not be up yet
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_error})")


def node_addr(port: int, name: str) -> str:
    return f"/ip4/127.0.0.1/tcp/{port}/p2p/{Identity.from_label(f'test-node-{name}').peer_id}"


async def upload_and_register(rpc: Any, tenant: Any, *, chain_id: str, nonce: int, data: bytes,
                              name: str = "sales", fmt: str = "csv", timeout: float = 90) -> dict[str, Any]:
    """Upload ``data`` as the tenant (one chunk), wait for its data.store receipt
    on chain, and commit the dataset.register that cites it; returns the upload row."""
    import base64

    import trio

    from node.consensus.tx import sign_tx
    from node.p2p.rpc import RpcCallError

    with trio.fail_after(timeout):
        while True:  # the node takes uploads once it is registered on chain
            try:
                uploaded = await rpc.call("dataset_upload", {"name": name, "format": fmt, "chunk": base64.b64encode(data).decode(), "final": True})
                break
            except RpcCallError as exc:
                if exc.code != 1213:
                    raise
            await trio.sleep(0.2)
    receipt_id = uploaded["receipt"]["id"]
    with trio.fail_after(timeout):
        while True:
            try:
                await rpc.call("receipt_get", {"id": receipt_id})
                break
            except RpcCallError as exc:
                if exc.code != 1404:
                    raise
            await trio.sleep(0.1)
    register = sign_tx(tenant, chain_id=chain_id, nonce=nonce, tx_type="dataset.register", payload={
        "digest": bytes.fromhex(uploaded["digest"]), "size": len(data), "name": name, "format": fmt,
        "receipt": bytes.fromhex(receipt_id)})
    done = await rpc.call("tx_submit", {"tx": register.encoded.hex(), "mode": "commit", "timeout": timeout}, timeout=timeout + 30)
    assert "state_rejected" not in done, done
    return uploaded
