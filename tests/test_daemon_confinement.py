"""A running daemon is confined under its roles' DockLock policy (issue 4,
"caged services"): it cannot read or write outside its data directory nor
exec a program, which a compromised parser would try."""

from __future__ import annotations

import errno
import subprocess
import sys

import pytest

from tests.support import METANODE, DaemonProcess, free_port, node_addr, rpc_json, wait_until, write_node_config


def call_error(addr: str, method: str, params: dict) -> dict:
    import json

    from tests.support import run_cli

    done = run_cli("rpc", method, json.dumps(params), "--node", addr)
    assert done.returncode == 1, done.stdout + done.stderr
    return json.loads(done.stderr)


@pytest.mark.parametrize("roles, policy", [(["gateway"], "gateway"), (["processing", "storage"], "processing")])
def test_daemon_cannot_leave_its_data_dir_or_exec(tmp_path, roles, policy):
    port = free_port()
    secret = tmp_path / "other-node.key"
    secret.write_text("another node's key\n")
    cfg = write_node_config(tmp_path / "node", "a", port=port, roles=roles, service_policy=None, debug_rpc=True)
    addr = node_addr(port, "a")
    data_dir = tmp_path / "node" / "data-a"
    with DaemonProcess(cfg) as proc:
        status = wait_until(lambda: rpc_json(addr, "node_status"), 60, what="daemon")
        cage = status["cage"]
        assert cage["policy"] == policy
        assert {"landlock", "seccomp"} <= set(cage["layers"]) and cage["network"] == "allowed"
        # Inside its data directory the daemon works normally...
        assert rpc_json(addr, "debug_write_file", {"path": str(data_dir / "scratch")})["written"]
        assert rpc_json(addr, "debug_read_file", {"path": str(data_dir / "scratch")})["bytes"] > 0
        # ...outside it, reads and writes are denied by Landlock,
        for path in (str(secret), "/etc/shadow", str(tmp_path / "node" / "a.key")):
            assert call_error(addr, "debug_read_file", {"path": path})["data"]["errno"] == errno.EACCES
        assert call_error(addr, "debug_write_file", {"path": str(tmp_path / "planted")})["data"]["errno"] == errno.EACCES
        # ...and exec is refused by seccomp.
        assert call_error(addr, "debug_exec", {"argv": ["/bin/true"]})["data"]["errno"] in (errno.EPERM, errno.EACCES)
        assert proc.proc.poll() is None  # the daemon survives all of it
        assert rpc_json(addr, "node_status")["peer_id"]
    assert not (tmp_path / "planted").exists()


LAUNCH_WITHOUT_LANDLOCK = """
import errno, os, sys, pyseccomp
f = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
f.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "landlock_create_ruleset")
f.load()
os.execv(sys.executable, [sys.executable, "-m", "node", *sys.argv[1:]])
"""


def test_policy_the_host_cannot_enforce_refuses_to_start(tmp_path):
    cfg = write_node_config(tmp_path, "a", port=free_port(), service_policy=None)
    done = subprocess.run(
        [sys.executable, "-c", LAUNCH_WITHOUT_LANDLOCK, "daemon", "start", "--config", str(cfg)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "service_policy 'gateway'" in done.stderr and "missing landlock" in done.stderr
    assert "Traceback" not in done.stderr


def test_unknown_service_policy_is_a_config_error(tmp_path):
    cfg = write_node_config(tmp_path, "a", service_policy="nonesuch")
    done = subprocess.run([*METANODE, "daemon", "start", "--config", str(cfg)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "[cage] service_policy" in done.stderr and "nonesuch" in done.stderr
