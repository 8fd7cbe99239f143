"""Each confinement layer, attacked by a real job (tests/cage/cage_hostile_functions.py).

Every test names the layer it relies on and fails if that layer is gone:
without seccomp a socket opens and exec is refused by Landlock instead of
killing; without Landlock the reads and writes succeed; without rlimits
the loops run to the wall-clock limit; without the process-group kill the
grandchild survives."""

from __future__ import annotations

import errno
import signal
import time
from pathlib import Path

from node.cage.job import JobSpec


def fn_job(function: str, policy: str = "processing", **kwargs) -> JobSpec:
    return JobSpec(kind="python-fn", function=function, policy=policy, **kwargs)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_socket_gets_eperm_and_the_denial_is_witnessed(pool):  # seccomp (deny)
    outcome = pool.run(fn_job("hostile.open_socket"))
    assert outcome.ok, outcome.detail
    from node.cage.results import decode_result

    assert decode_result(outcome.result)["rows"] == [[errno.EPERM]]
    assert {"op": "socket", "target": "family=2", "layer": "seccomp"} in outcome.witness["denials"]


def test_exec_kills_the_job_and_is_witnessed(pool):  # seccomp (kill)
    outcome = pool.run(fn_job("hostile.exec"))
    assert outcome.status == "killed"
    assert outcome.witness["exit"]["signal"] == signal.SIGSYS
    assert outcome.witness["denials"][0]["op"] == "exec"
    assert outcome.witness["denials"][0]["target"] == "/bin/true"


def test_reading_etc_passwd_is_denied(pool):  # Landlock
    outcome = pool.run(fn_job("hostile.read_file", params={"path": "/etc/passwd"}))
    assert outcome.status == "error"
    assert "PermissionError" in outcome.detail and "/etc/passwd" in outcome.detail
    assert {"op": "open", "target": "read /etc/passwd", "layer": "landlock"} in outcome.denials


def test_reading_a_sibling_of_the_inputs_is_denied(pool, csv_input: Path):  # Landlock
    secret = csv_input.parent.parent / "sibling" / "key"
    outcome = pool.run(fn_job("hostile.read_file", inputs={"sales": str(csv_input)},
                              params={"path": str(secret)}))
    assert outcome.status == "error" and "PermissionError" in outcome.detail
    # The input itself stays readable.
    ok = pool.run(fn_job("hostile.read_file", inputs={"sales": str(csv_input)},
                         params={"path": str(csv_input)}))
    assert ok.ok, ok.detail


def test_writing_outside_the_output_dir_is_denied(pool, tmp_path: Path, output_dir: Path):  # Landlock
    target = tmp_path / "escaped.txt"
    outcome = pool.run(fn_job("hostile.write_file", output_dir=str(output_dir),
                              params={"path": str(target)}))
    assert outcome.status == "error" and "PermissionError" in outcome.detail
    assert not target.exists()
    assert outcome.denials == [{"op": "open", "target": f"write {target}", "layer": "landlock"}]


def test_writing_inside_the_output_dir_is_recorded(pool, output_dir: Path):
    outcome = pool.run(fn_job("hostile.write_output", output_dir=str(output_dir), params={"text": "hi"}))
    assert outcome.ok, outcome.detail
    assert (output_dir / "report.txt").read_text() == "hi"
    [entry] = outcome.witness["outputs"]
    assert entry["path"] == "report.txt" and entry["size"] == 2


def test_inputs_are_read_only(pool, csv_input: Path):  # Landlock
    outcome = pool.run(fn_job("hostile.write_file", inputs={"sales": str(csv_input)},
                              params={"path": str(csv_input)}))
    assert outcome.status == "error" and "PermissionError" in outcome.detail
    assert csv_input.read_text().startswith("region,amount")


def test_duckdb_sandbox_refuses_paths_outside_the_inputs(pool):  # DuckDB lock (+ Landlock)
    outcome = pool.run(fn_job("hostile.duckdb_read", params={"path": "/etc/passwd"}))
    assert outcome.status == "error"
    assert "Permission" in outcome.detail


def test_cpu_loop_is_killed_at_its_cpu_limit(pool):  # RLIMIT_CPU
    outcome = pool.run(fn_job("hostile.cpu_loop", policy="tight"))
    assert outcome.status == "cpu_limit", outcome.detail
    # The kernel checks RLIMIT_CPU (1 s) on its tick; on a loaded machine the sampled
    # accounting can read a little under it. Killed for CPU, not at once:
    assert outcome.observed["cpu_us"] >= 500_000


def test_memory_bomb_is_stopped_at_its_memory_limit(pool):  # RLIMIT_AS
    outcome = pool.run(fn_job("hostile.memory_bomb", policy="tight"))
    assert outcome.status == "memory_limit", outcome.detail
    assert outcome.observed["max_rss_kb"] < 384 * 1024


def test_wall_clock_timeout_kills_the_whole_process_group(pool, output_dir: Path):
    outcome = pool.run(fn_job("hostile.fork_and_hang", policy="forking", output_dir=str(output_dir)))
    assert outcome.status == "timeout"
    pid = int((output_dir / "grandchild.pid").read_text())
    deadline = time.monotonic() + 5
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not pid_alive(pid), "the job's grandchild outlived the timeout"


def test_fork_is_denied_under_maximum(pool, output_dir: Path):  # seccomp clone filter
    outcome = pool.run(fn_job("hostile.fork_and_hang", policy="short", output_dir=str(output_dir)))
    assert outcome.status == "error" and "PermissionError" in outcome.detail
    assert outcome.denials[0]["op"] == "fork"


def test_every_layer_is_recorded_as_applied(pool):
    outcome = pool.run(fn_job("table_summary", inputs={}, params={"input": "none"}))
    assert outcome.witness["layers"] == {
        "applied": ["rlimits", "user+net namespace", "landlock", "seccomp"], "missing": []}
