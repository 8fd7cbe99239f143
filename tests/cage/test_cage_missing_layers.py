"""Hosts without a layer, simulated for real: the CLI runs under a seccomp
filter that makes unshare(2) or Landlock fail, as in a container whose
runtime blocks them. `maximum` must refuse and name the missing layer; a
permissive policy runs and records what it lacked."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest

from node.cage.witness import decode_witness_file

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = """
import errno, os, sys, pyseccomp
f = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
f.add_rule(pyseccomp.ERRNO(int(sys.argv[2])), sys.argv[1])
f.load()
os.execv(sys.executable, [sys.executable, "-m", "node", *sys.argv[3:]])
"""
BLOCKED = {
    "user+net namespace": ("unshare", errno.EPERM),
    "landlock": ("landlock_create_ruleset", errno.ENOSYS),
}


def metanode_without(layer: str, *args: str) -> subprocess.CompletedProcess[str]:
    syscall, err = BLOCKED[layer]
    return subprocess.run([sys.executable, "-c", LAUNCH, syscall, str(err), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("layer", sorted(BLOCKED))
def test_check_reports_the_missing_layer(layer: str):
    done = metanode_without(layer, "cage", "check")
    assert done.returncode == 0, done.stderr
    line = next(out for out in done.stdout.splitlines() if out.strip().endswith(tuple(BLOCKED)) or layer in out)
    assert line.strip().startswith("NO")
    assert f"REFUSED: missing {layer}" in done.stdout
    assert "processing   maximum    REFUSED" in done.stdout


@pytest.mark.parametrize("layer", sorted(BLOCKED))
def test_maximum_is_refused_naming_the_layer(layer: str):
    done = metanode_without(layer, "cage", "run", "--policy", "processing", "--sql", "SELECT 1 AS one")
    assert done.returncode == 1
    assert f"policy 'processing' (maximum) cannot run on this host: missing {layer}" in done.stderr
    assert "Traceback" not in done.stderr


def test_permissive_runs_and_records_what_is_missing(tmp_path: Path):
    policies = tmp_path / "p.toml"
    policies.write_text('[policies.loose]\nenforcement_level = "permissive"\ndeny = ["socket"]\n',
                        encoding="utf-8")
    witness = tmp_path / "w.cbor"
    done = metanode_without("landlock", "cage", "run", "--policies", str(policies), "--policy", "loose",
                            "--sql", "SELECT 1 AS one", "--witness", str(witness))
    assert done.returncode == 0, done.stderr
    record, _, _ = decode_witness_file(witness.read_bytes())
    assert record["layers"]["missing"] == ["landlock"]
    assert "landlock" not in record["layers"]["applied"] and "seccomp" in record["layers"]["applied"]
