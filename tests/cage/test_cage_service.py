"""confine_service: a process confined to its data directory, in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import json, os, socket, sys, threading
from node.cage.policy import default_policy_path, load_policies
from node.cage.service import confine_service
from node.cage.job import CageError

data, other = sys.argv[1], sys.argv[2]
policy = load_policies(default_policy_path())[sys.argv[3]]
if sys.argv[4] == "thread":
    threading.Thread(target=threading.Event().wait, daemon=True).start()
    try:
        confine_service(policy, data_dir=data)
    except CageError as exc:
        print(json.dumps({"refused": str(exc)}))
    sys.exit(0)
applied = confine_service(policy, data_dir=data, allow_network=sys.argv[4] == "net")
report = {"applied": applied.to_dict()}

def attempt(name, action):
    try:
        action()
        report[name] = "ok"
    except OSError as exc:
        report[name] = type(exc).__name__

attempt("read_other_key", lambda: open(os.path.join(other, "key")).read())
attempt("read_etc_shadow", lambda: open("/etc/shadow").read())
attempt("write_data", lambda: open(os.path.join(data, "state"), "w").write("x"))
attempt("write_tmp", lambda: open("/tmp/metanode-service-escape", "w").write("x"))
attempt("exec", lambda: os.execv("/bin/true", ["true"]))
attempt("socket", lambda: socket.socket().close())
attempt("thread", lambda: threading.Thread(target=lambda: None).start())
print(json.dumps(report))
"""


def run(tmp_path: Path, policy: str, mode: str) -> dict:
    data, other = tmp_path / "node1", tmp_path / "node2"
    data.mkdir()
    other.mkdir()
    (other / "key").write_text("other node's key", encoding="utf-8")
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(data), str(other), policy, mode],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_gateway_service_keeps_network_but_not_other_files_or_exec(tmp_path: Path):
    report = run(tmp_path, "gateway", "net")
    assert report["applied"]["layers"] == ["rlimits", "landlock", "seccomp"]
    assert report["applied"]["network"] == "allowed" and report["applied"]["policy"] == "gateway"
    assert "execve" in report["applied"]["denied_syscalls"]
    assert report["read_other_key"] == "PermissionError"
    assert report["read_etc_shadow"] == "PermissionError"
    assert report["write_tmp"] == "PermissionError"
    assert report["exec"] == "PermissionError"
    assert report["write_data"] == "ok"
    assert report["socket"] == "ok"
    assert report["thread"] == "ok"
    assert not Path("/tmp/metanode-service-escape").exists()


def test_service_without_network_cannot_open_sockets(tmp_path: Path):
    report = run(tmp_path, "processing", "nonet")
    assert report["applied"]["network"] == "denied"
    assert report["socket"] == "PermissionError"
    assert report["read_other_key"] == "PermissionError"


def test_service_confinement_refuses_a_threaded_process(tmp_path: Path):
    report = run(tmp_path, "gateway", "thread")
    assert "must run before any thread starts (2 threads exist)" in report["refused"]
