"""Start and stop testnet nodes as real background daemon processes (pid files, logs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from node.testnet.layout import read_manifest


def pid_file(directory: Path, name: str) -> Path:
    return directory / f"{name}.pid"


def log_file(directory: Path, name: str) -> Path:
    return directory / f"{name}.log"


def running_pid(directory: Path, name: str) -> int | None:
    try:
        pid = int(pid_file(directory, name).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _alive(pid) else None


def start_node(directory: Path, name: str, config: str, command: Sequence[str] | None = None) -> int:
    """Start one node in the background (own session); returns its pid.
    ``command``: the argv to run instead of ``metanode daemon start --config``
    (the config path is appended), e.g. a test double of a node."""
    existing = running_pid(directory, name)
    if existing is not None:
        return existing
    log = open(log_file(directory, name), "ab")
    argv = list(command) if command is not None else [sys.executable, "-m", "node", "daemon", "start", "--config"]
    proc = subprocess.Popen(
        [*argv, str(directory / config)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    log.close()
    pid_file(directory, name).write_text(f"{proc.pid}\n")
    return proc.pid


def up(directory: Path, commands: Mapping[str, Sequence[str]] | None = None) -> dict[str, int]:
    """Start every node; ``commands`` maps node names to another argv (see start_node)."""
    commands = commands or {}
    return {str(n["name"]): start_node(directory, str(n["name"]), str(n["config"]), commands.get(str(n["name"])))
            for n in read_manifest(directory)}


def down(directory: Path, *, timeout: float = 10.0) -> dict[str, str]:
    """SIGTERM every node, then SIGKILL what is still alive after ``timeout``."""
    outcome: dict[str, str] = {}
    pids = {}
    for node in read_manifest(directory):
        name = str(node["name"])
        pid = running_pid(directory, name)
        if pid is None:
            outcome[name] = "not running"
            continue
        os.kill(pid, signal.SIGCONT)  # a paused node must be able to handle SIGTERM
        os.kill(pid, signal.SIGTERM)
        pids[name] = pid
    deadline = time.monotonic() + timeout
    for name, pid in pids.items():
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            outcome[name] = "killed"
        else:
            outcome[name] = "stopped"
        pid_file(directory, name).unlink(missing_ok=True)
    return outcome


def _alive(pid: int) -> bool:
    """True while ``pid`` runs. A dead child of ours is reaped; a zombie
    (dead, not yet reaped by its parent) counts as dead."""
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        if finished == pid:
            return False
    except ChildProcessError:
        pass  # not our child
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True
