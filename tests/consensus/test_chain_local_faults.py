"""Clear stops (issue 13, case 10): a full disk, a broken data directory or a
lost lock ends the daemon with one error line naming the path and the cause,
exit code 5 (EXIT_DATA_DIR), and no traceback; the other validators go on.

Faults are real: a small tmpfs filled to the last byte (mounted as root, so
these tests are skipped elsewhere), a data directory that is a file, a lock
file removed under a running daemon.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import trio

from node.base.errors import EXIT_DATA_DIR
from node.consensus.safety import SafetyState, SafetyStore, SafetyWriteError
from node.p2p.client import call_node
from node.testnet import layout, processes
from tests.consensus.test_chain_rpc import single_validator
from tests.support import DaemonProcess, run_cli, wait_until

pytestmark = pytest.mark.timeout(300)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        for _ in range(50):  # a daemon may still hold a file for a moment
            if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> None:
    """Write until the filesystem refuses: no byte left for anyone."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            try:
                while os.write(fd, b"\0" * size):
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)


def error_lines(log: str) -> list[dict]:
    lines = []
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        # Ours: libp2p logs a refused dial at error level while peers start.
        if record.get("level") in ("error", "critical") and str(record.get("logger", "")).startswith("metanode"):
            lines.append(record)
    return lines


def height(address: str) -> int:
    return trio.run(lambda: call_node(address, "chain_head", timeout=10))["height"]


@needs_root
def test_safety_save_on_a_full_disk_refuses_and_leaves_the_old_state(tmp_path):
    with small_tmpfs(tmp_path / "disk", "64k") as disk:
        store = SafetyStore(disk / "consensus-safety.cbor")
        store.save(SafetyState(height=3, round=0, step=1, signed_payload=b"p"))
        fill(disk)
        with pytest.raises(SafetyWriteError) as info:
            # more than the free room of the page the file already has: the append needs a new block
            store.save(SafetyState(height=3, round=0, step=2, signed_payload=b"q" * 8192))
        message = str(info.value)
        assert str(disk) in message and "No space left on device" in message and "stopped voting" in message
        assert info.value.exit_code == EXIT_DATA_DIR
        assert store.load() == SafetyState(height=3, round=0, step=1, signed_payload=b"p")  # the old one, whole
        assert not (disk / "consensus-safety.cbor.tmp").exists()


@needs_root
def test_a_validator_whose_disk_fills_stops_with_one_line_and_the_others_go_on(tmp_path):
    directory = tmp_path / "net"
    plans = layout.plan_testnet(4, seed="disk-full")
    layout.write_testnet(directory, plans)
    addr = {p.name: p.address for p in plans}
    with small_tmpfs(directory / "node3-data", "48m") as disk:
        for plan in plans[:3]:
            processes.start_node(directory, plan.name, f"{plan.name}.toml")
        victim = DaemonProcess(directory / "node3.toml", log_path=directory / "node3.log")
        try:
            wait_until(lambda: all(height(a) >= 2 for a in addr.values()), 90, what="four validators finalising")
            fill(disk)
            code = victim.proc.wait(30)  # it stops by itself, soon
            log = victim.log()
            assert code == EXIT_DATA_DIR, log[-3000:]
            assert "Traceback" not in log and "ExceptionGroup" not in log
            (line,) = error_lines(log)  # one error line: path and cause
            assert str(disk) in line["cause"] and "No space left on device" in line["cause"], line
            others = [addr[n] for n in ("node0", "node1", "node2")]
            start = max(height(a) for a in others)
            wait_until(lambda: min(height(a) for a in others) >= start + 3, 60, what="the other three to go on finalising")
        finally:
            victim.stop()
            processes.down(directory)


def test_a_data_directory_that_is_a_file_is_one_line_and_exit_code_5(tmp_path):
    cfg, _ = single_validator(tmp_path, period_ms=500)
    (tmp_path / "data-v").write_text("not a directory\n")
    done = run_cli("daemon", "start", "--config", str(cfg), timeout=60)
    assert done.returncode == EXIT_DATA_DIR, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert str(tmp_path / "data-v") in line


def test_a_lost_lock_stops_the_daemon_with_one_line(tmp_path):
    cfg, _ = single_validator(tmp_path, period_ms=200)
    cfg.write_text(cfg.read_text() + '\n[log]\nformat = "json"\n')
    with DaemonProcess(cfg) as daemon:
        lock = tmp_path / "data-v" / "daemon.lock"
        wait_until(lambda: "daemon started" in daemon.log(), 60, what="the daemon to start")
        lock.unlink()  # as `rm -rf` of the data directory would
        code = daemon.proc.wait(30)
        log = daemon.log()
        assert code == EXIT_DATA_DIR, log[-3000:]
        assert "Traceback" not in log
        (line,) = error_lines(log)
        assert str(lock) in line["cause"] and "lock lost" in line["cause"]
