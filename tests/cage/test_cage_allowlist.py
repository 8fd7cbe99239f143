"""The planning documents' policy keys: ``allow_network`` and the ``syscalls``
seccomp allow-list, enforced for real in caged jobs and confined services, and
``metanode cage check --policy`` naming the syscalls an allow-list lacks."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest

from node.base.errors import ConfigError
from node.cage.job import JobSpec
from node.cage.policy import default_policy_path, load_policies, parse_policies, parse_policy
from node.cage.pool import CagePool
from node.cage.results import decode_result
from node.cage.syscall_probe import PROBE_SQL, probe_policy_syscalls, write_probe_input
from tests.support import run_cli

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

# The planning document's Phase 4 policies, exactly as written.
SEED_POLICIES = """
[policies.gateway]
enforcement_level = "strict"
enable_witness_recording = true
allow_network = true
syscalls = ["read", "write", "socket", "connect"]

[policies.processing]
enforcement_level = "maximum"
deterministic_execution = true
enable_witness_recording = true
rng_seed_source = "deterministic"
syscalls = ["read", "write", "open", "close"]
deny = ["socket", "random", "fork"]
"""


def shipped_allow_list() -> list[str]:
    allow = load_policies(default_policy_path())["processing-allowlist"].syscalls
    assert allow is not None
    return list(allow)


def refusal(table: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_policies({"policies": {"p": table}}, source="test.toml")
    return str(info.value)


@pytest.fixture
def seed_policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "seed-policies.toml"
    path.write_text(SEED_POLICIES, encoding="utf-8")
    return path


def test_the_seed_policies_load_as_written(seed_policy_file: Path):
    policies = load_policies(seed_policy_file)
    assert policies["gateway"].network == "allowed"
    assert policies["gateway"].syscalls == ("read", "write", "socket", "connect")
    processing = policies["processing"]
    assert processing.syscalls == ("read", "write", "open", "close")
    # exec is not in deny or kill, but the allow-list leaves it out: maximum accepts that.
    assert processing.blocks("exec") and processing.blocks("fork") and processing.blocks("socket")
    assert not load_policies(seed_policy_file)["gateway"].blocks("socket")


@pytest.mark.parametrize(("table", "network"), [
    ({"allow_network": True}, "allowed"),
    ({"allow_network": False}, "denied"),
    ({"allow_network": True, "network": "allowed"}, "allowed"),
    ({}, "denied"),
])
def test_allow_network_is_an_alias_of_network(table: dict, network: str):
    assert parse_policy("p", {"enforcement_level": "strict", **table}).network == network


def test_allow_network_disagreeing_with_network_is_refused():
    assert refusal({"allow_network": True, "network": "denied"}) == (
        "test.toml: [policies.p] allow_network: true disagrees with network = 'denied'; give one of them")
    assert refusal({"allow_network": "yes"}) == (
        "test.toml: [policies.p] allow_network: expected true or false, got str 'yes'")


@pytest.mark.parametrize(("table", "message"), [
    ({"syscalls": ["read", "socket"], "deny": ["socket"]},
     "test.toml: [policies.p]: syscalls: 'socket' is both allowed (syscalls) and in deny"),
    ({"syscalls": ["read", "execve"], "kill": ["exec"]},
     "test.toml: [policies.p]: syscalls: 'execve' is both allowed (syscalls) and in kill"),
    ({"syscalls": ["read", "clone3"], "deny": ["fork"]},
     "test.toml: [policies.p]: syscalls: 'clone3' cannot be allowed while deny blocks 'fork': "
     "its flags are out of a filter's reach"),
    ({"syscalls": ["setsid"]},
     "test.toml: [policies.p]: syscalls: 'setsid' cannot be allowed: a job must stay in the process group "
     "its supervisor kills"),
    ({"syscalls": ["read", "no_such_call"]},
     "test.toml: [policies.p] syscalls: 'no_such_call' is neither a syscall group (socket, random, fork, exec, "
     "ptrace, mount, namespace, session) nor a known syscall"),
    ({"syscalls": ["read", "read"]}, "test.toml: [policies.p] syscalls: expected distinct entries, got 'read' twice"),
    ({"allow_network": True, "syscalls": ["read", "write"]},
     "test.toml: [policies.p]: network = 'allowed' needs 'socket' in syscalls (the allow-list)"),
])
def test_contradicting_allow_lists_are_refused_naming_the_syscall(table: dict, message: str):
    assert refusal({"enforcement_level": "strict", **table}) == message


def test_another_architectures_syscall_names_load_and_clone_may_serve_threads():
    # `socketcall` exists on 32-bit x86 only: an allow-list written for it still loads here.
    policy = parse_policy("p", {"enforcement_level": "strict", "syscalls": ["read", "socketcall", "clone"],
                                "deny": ["fork"]})
    assert policy.blocks("fork") and policy.blocks("random") and not policy.blocks("socketcall")


def test_policies_without_an_allow_list_keep_their_digest():
    # Digests of the shipped default policies before allow-lists existed (witnesses and receipts name them).
    policies = load_policies(default_policy_path())
    assert policies["gateway"].digest.hex()[:16] == "e509089e904fec45"
    assert policies["processing"].digest.hex()[:16] == "b241e73c11599744"
    assert "syscalls" not in policies["processing"].to_value()
    allow_listed = policies["processing-allowlist"]
    assert allow_listed.to_value()["syscalls"] == shipped_allow_list()


@pytest.fixture(scope="module")
def allow_list_pool():
    """Policies that differ from each other only by an allow-list."""
    no_socket_rule = {"enforcement_level": "strict", "deny": ["random"], "kill": ["exec"]}
    policies = parse_policies({"policies": {
        "no-allow-list": no_socket_rule,
        # socket is in no deny list: only its absence from the allow-list refuses it.
        "allow-list": {**no_socket_rule, "syscalls": shipped_allow_list()},
        "uname-allowed": {**no_socket_rule, "syscalls": [*shipped_allow_list(), "uname"]},
    }}, source="test")
    policies.update(load_policies(default_policy_path()))
    with CagePool(policies, python_path=[str(HERE)], function_modules=["cage_hostile_functions"]) as pool:
        yield pool


def test_an_unlisted_syscall_is_denied_in_a_caged_job(allow_list_pool):
    without = allow_list_pool.run(JobSpec(kind="python-fn", function="hostile.open_socket", policy="no-allow-list"))
    assert without.ok, without.detail
    assert decode_result(without.result)["rows"] != [[errno.EPERM]]  # the socket opened (in the empty namespace)
    denied = allow_list_pool.run(JobSpec(kind="python-fn", function="hostile.open_socket", policy="allow-list"))
    assert denied.ok, denied.detail
    assert decode_result(denied.result)["rows"] == [[errno.EPERM]]
    assert {"op": "socket", "target": "family=2", "layer": "seccomp"} in denied.witness["denials"]
    assert denied.witness["policy"]["syscalls"] == shipped_allow_list()


def test_the_shipped_allow_list_policy_runs_a_real_sql_job(allow_list_pool, tmp_path: Path):
    sales = write_probe_input(tmp_path)
    outcomes = [allow_list_pool.run(JobSpec(kind="sql", policy=name, inputs={"sales": str(sales)}, sql=PROBE_SQL))
                for name in ("processing", "processing-allowlist")]
    assert all(o.ok for o in outcomes), [o.detail for o in outcomes]
    assert outcomes[0].result_digest == outcomes[1].result_digest
    assert [row[0] for row in decode_result(outcomes[1].result)["rows"]] == ["east", "north", "south", "west"]


def test_the_seed_processing_policy_cannot_run_a_job(seed_policy_file: Path, tmp_path: Path):
    seed = load_policies(seed_policy_file)["processing"]
    sales = write_probe_input(tmp_path)
    with CagePool({"processing": seed}) as pool:
        outcome = pool.run(JobSpec(kind="sql", policy="processing", inputs={"sales": str(sales)}, sql=PROBE_SQL))
    assert not outcome.ok


def test_the_probe_names_every_syscall_the_allow_list_lacks(seed_policy_file: Path):
    report = probe_policy_syscalls(load_policies(seed_policy_file)["processing"])
    assert report.status == "ok"  # the probe lets each unlisted syscall run, so the job finishes
    # glibc opens files with openat (not the listed `open`), and a job maps memory.
    assert {"openat", "mmap", "fstat"} <= set(report.unlisted)
    assert not {"read", "write", "close"} & set(report.unlisted)
    assert not report.runs
    shipped = probe_policy_syscalls(load_policies(default_policy_path())["processing-allowlist"])
    assert shipped.runs and shipped.unlisted == ()


def test_cage_check_names_the_missing_syscalls_and_fails(seed_policy_file: Path):
    done = run_cli("cage", "check", "--policies", str(seed_policy_file), "--policy", "processing")
    assert done.returncode == 1, done.stdout + done.stderr
    line = next(line for line in done.stderr.splitlines() if "lacks" in line)
    assert line.startswith("error: policy 'processing' cannot run a job: its syscalls allow-list lacks ")
    assert "openat" in line and "mmap" in line


def test_cage_check_passes_the_shipped_allow_list_example():
    done = run_cli("cage", "check", "--policy", "processing-allowlist")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "syscalls outside the allow-list the job made: none (job ok)" in done.stdout
    assert "job status: ok" in done.stdout
    assert "policy 'processing-allowlist' runs jobs" in done.stdout


def test_cage_check_refuses_an_unknown_policy_name():
    done = run_cli("cage", "check", "--policy", "nope")
    assert done.returncode == 2
    assert "--policy: no policy 'nope' (known: gateway, processing, processing-allowlist, strict-determinism)" in done.stderr


SERVICE_SCRIPT = """
import json, os, sys
from node.cage.policy import parse_policy
from node.cage.service import confine_service

allow = json.loads(sys.argv[2])
policy = parse_policy("svc", {"enforcement_level": "strict", "syscalls": allow})
applied = confine_service(policy, data_dir=sys.argv[1], allow_network=False)
try:
    os.uname()
    outcome = "ok"
except OSError as exc:
    outcome = exc.errno
print(json.dumps({"uname": outcome, "allowed": applied.to_dict()["allowed_syscalls"] is not None}), flush=True)
"""


@pytest.mark.parametrize(("extra", "expected"), [([], errno.EPERM), (["uname"], "ok")])
def test_a_confined_service_is_held_to_its_allow_list(tmp_path: Path, extra: list[str], expected):
    allow = [*shipped_allow_list(), "ioctl", "sysinfo", "getrandom", "pipe2", "dup", "dup2", *extra]
    done = subprocess.run([sys.executable, "-c", SERVICE_SCRIPT, str(tmp_path), json.dumps(allow)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, env={"PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"uname": expected, "allowed": True}
