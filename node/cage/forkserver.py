"""The fork server: imports Python, DuckDB and the registered functions
once, then forks one fresh confined child per job and supervises it.

Started by :class:`node.cage.pool.CagePool` as
``python -s -P -m node.cage.forkserver`` with the scrubbed cage
environment. It speaks frames on stdin/stdout: a ``hello`` first (host
capabilities, versions, worker digest), then one ``outcome`` per ``job``.
It stays single-threaded (DuckDB is opened with no background threads) so
that forking it is safe and each child confines a single thread.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import os
import platform
import resource
import select
import signal
import sys
import tempfile
import time
import shutil
from typing import Any

import duckdb

from node.cage import layers as L
from node.cage.functions import get_function, registered_functions
from node.cage.job import CAGE_ENVIRONMENT, read_frame, split_frames, write_frame
from node.cage.policy import Policy, missing_layers, policy_from_value
from node.cage.results import result_digest
from node.cage.witness import (
    WITNESS_VERSION,
    describe_inputs,
    describe_outputs,
    effective_seed,
    encode_witness_file,
    input_format,
    inputs_root,
    job_digest,
    witness_digest,
    worker_digest,
)
from node.cage.worker import _realpath, job_filter, run_child

try:  # loaded here, once: importing it runs find_library, which a confined child cannot
    import pyseccomp  # noqa: F401
except (ImportError, OSError):  # the probe then reports seccomp as unavailable
    pass

PR_SET_CHILD_SUBREAPER = 36
_SIGNAL_STATUS = {signal.SIGSYS: "killed", signal.SIGXCPU: "cpu_limit"}


class ForkServer:
    """One job at a time: prepare, fork, supervise, describe."""

    def __init__(self) -> None:
        # Orphaned grandchildren of a job are re-parented here, so they can be reaped.
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        self.base = duckdb.connect(config={
            "threads": 1, "async_threads": 0, "allocator_background_threads": False,
            "autoinstall_known_extensions": False, "autoload_known_extensions": False,
            # No file contents cached across jobs (a child inherits the instance).
            "enable_external_file_cache": False,
        })
        self._warm_up()
        self.caps = L.probe_host()
        for path in L.runtime_read_paths():
            _realpath(path)
        self.worker_digest = worker_digest()
        self.versions = {"duckdb": duckdb.__version__, "python": platform.python_version()}

    def _warm_up(self) -> None:
        """Pay first-use costs (lazy modules, the CSV and Parquet readers, the
        parser's JSON export) once here instead of in every child. Only
        queries run: the instance's catalog stays empty."""
        con = self.base
        duckdb.extract_statements("SELECT 1")
        con.execute("SELECT json_serialize_sql('SELECT 1')").fetchall()
        with tempfile.TemporaryDirectory(prefix="metanode-cage-warm-") as tmp:
            csv, parquet = os.path.join(tmp, "w.csv"), os.path.join(tmp, "w.parquet")
            with open(csv, "w", encoding="utf-8") as handle:
                handle.write("k,v\n1,0.5\n2,1.5\n")
            con.execute(f"COPY (SELECT * FROM read_csv('{csv}')) TO '{parquet}' (FORMAT parquet)").fetchall()
            for reader, path in (("read_csv", csv), ("read_parquet", parquet)):
                con.execute(f"SELECT * FROM (SELECT k, sum(v) FROM {reader}('{path}') GROUP BY k\n) q LIMIT 0").fetchall()
                con.execute(f"SELECT k, sum(v), avg(v) FROM {reader}('{path}') GROUP BY k ORDER BY k").fetchall()

    def hello(self) -> dict[str, Any]:
        return {"t": "hello", "capabilities": self.caps.to_value(), "versions": self.versions,
                "worker_digest": self.worker_digest, "functions": registered_functions(),
                "threads": L.thread_count()}

    def run(self, job: dict[str, Any], policy: Policy) -> dict[str, Any]:
        start = time.monotonic()
        missing = missing_layers(policy, self.caps.layers)
        if missing:
            return {"t": "unenforceable", "policy": policy.name, "level": policy.enforcement_level,
                    "missing": missing, "detail": {m: self.caps.detail.get(m, "") for m in missing}}
        applied = [layer for layer in L.ALL_LAYERS if layer in self.caps.layers]
        if L.LAYER_SECCOMP in applied:
            job_filter(tuple(policy.deny), tuple(policy.kill))  # built here once, loaded by the child
        if job["kind"] == "python-fn":
            get_function(job["function"])  # KeyError names the registered ones
        job_part = {"kind": job["kind"], "sql": job["sql"], "function": job["function"],
                    "function_code": get_function(job["function"]).code_digest if job["function"] else None,
                    "params": job["params"]}
        digest = job_digest(job_part)
        seed = effective_seed(job["seed"], digest) if policy.rng_seed_source == "deterministic" else b""
        clock = job["clock"] if policy.clock_source == "logical" else int(time.time())
        formats = {name: input_format(path) for name, path in job["inputs"].items()}
        scratch = None
        output_dir = job["output_dir"]
        if output_dir is None:
            scratch = output_dir = tempfile.mkdtemp(prefix="metanode-cage-out-")
        try:
            prepared = {"inputs": [{"name": name, "path": path, "format": formats[name]}
                                   for name, path in sorted(job["inputs"].items())],
                        "output_dir": output_dir, "seed": seed, "clock": clock}
            report, exit_info, observed, described = self._supervise(job, prepared, policy, applied)
            outputs = describe_outputs(output_dir)
        finally:
            if scratch:
                shutil.rmtree(scratch, ignore_errors=True)
        status, detail = exit_info["status"], exit_info["detail"]
        result = report.get("result")
        out_bytes = sum(o["size"] for o in outputs) + len(result or b"")
        if status == "ok" and out_bytes > policy.limits.output_mb * 1024 * 1024:
            status, detail, result = "output_limit", f"output exceeds {policy.limits.output_mb} MB", None
        digest_of_result = result_digest(result) if result is not None and status == "ok" else None
        record = {
            "version": WITNESS_VERSION,
            "job": job_part,
            "job_seed": job["seed"],
            "code": {"job": digest, "policy": policy.digest, "worker": self.worker_digest, **self.versions},
            "policy": policy.to_value(),
            "inputs": described,
            "inputs_root": inputs_root(described),
            "environment": dict(sorted(CAGE_ENVIRONMENT.items())),
            "seed": seed,
            "clock": clock,
            "layers": {"applied": applied, "missing": [m for m in L.ALL_LAYERS if m not in applied]},
            "result_digest": digest_of_result,
            "outputs": outputs,
            "exit": {"status": status, "detail": detail, "signal": exit_info["signal"]},
            "denials": report["denials"],
        }
        observed["total_us"] = int((time.monotonic() - start) * 1e6)
        unhashed = {"observed": observed, "input_paths": dict(job["inputs"]),
                    "output_dir": job["output_dir"]}
        return {"t": "outcome", "status": status, "detail": detail,
                "result": result if status == "ok" else None, "result_digest": digest_of_result,
                "witness": record, "witness_digest": witness_digest(record),
                "witness_file": encode_witness_file(record, unhashed), "observed": observed}

    def _supervise(self, job: dict[str, Any], prepared: dict[str, Any], policy: Policy,
                   applied: list[str]) -> tuple[dict[str, Any], dict[str, Any], dict[str, int], list[Any]]:
        read_fd, write_fd = os.pipe()
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, reported over the pipe
            os.close(read_fd)
            run_child(self.base, job, prepared, policy, applied, self.caps.landlock_abi, write_fd)
        os.close(write_fd)
        # Inputs are hashed for the witness while the child already runs.
        described = describe_inputs(job["inputs"])
        cap = policy.limits.output_mb * 1024 * 1024 + 1024 * 1024
        deadline = started + policy.limits.wall_clock_seconds
        buffer, frames, timed_out, overflow, garbled = b"", [], False, False, ""
        poller = select.poll()
        poller.register(read_fd, select.POLLIN | select.POLLHUP)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            if not poller.poll(int(remaining * 1000) + 1):
                continue
            chunk = os.read(read_fd, 1 << 20)
            if not chunk:
                break
            buffer += chunk
            if len(buffer) > cap:
                overflow = True
                break
            try:
                new, buffer = split_frames(buffer, max_size=cap)
                frames.extend(new)
            except ValueError as exc:
                garbled = f"worker sent a malformed report: {exc}"
                break
        os.close(read_fd)
        self._kill_group(pid)
        _, wait_status, usage = os.wait4(pid, 0)
        self._reap_orphans()
        wall = time.monotonic() - started
        report = {"denials": [], "result": None}
        result_frame = None
        for frame in frames:
            if isinstance(frame, dict) and frame.get("t") == "denial":
                report["denials"].append({k: str(frame.get(k, "")) for k in ("op", "target", "layer")})
            elif isinstance(frame, dict) and frame.get("t") == "result":
                result_frame = frame
        exit_info = self._exit_info(wait_status, usage, policy, result_frame, timed_out, overflow, garbled)
        if exit_info["status"] == "ok":
            report["result"] = result_frame.get("result")  # type: ignore[union-attr]
        observed = {"wall_us": int(wall * 1e6), "cpu_us": int((usage.ru_utime + usage.ru_stime) * 1e6),
                    "max_rss_kb": int(usage.ru_maxrss)}
        return report, exit_info, observed, described

    @staticmethod
    def _exit_info(wait_status: int, usage: Any, policy: Policy, frame: dict[str, Any] | None,
                   timed_out: bool, overflow: bool, garbled: str) -> dict[str, Any]:
        sig = os.WTERMSIG(wait_status) if os.WIFSIGNALED(wait_status) else None
        cpu = usage.ru_utime + usage.ru_stime
        if timed_out:
            return {"status": "timeout", "signal": None,
                    "detail": f"wall-clock limit of {policy.limits.wall_clock_seconds} s; process group killed"}
        if overflow:
            return {"status": "output_limit", "signal": None,
                    "detail": f"report exceeds {policy.limits.output_mb} MB; process group killed"}
        if garbled:
            return {"status": "crashed", "signal": None, "detail": garbled}
        if frame is not None and sig in (None, signal.SIGKILL):
            status, detail = str(frame.get("status")), str(frame.get("detail"))
            if status == "ok" and not isinstance(frame.get("result"), bytes):
                return {"status": "crashed", "signal": None, "detail": "worker reported no result bytes"}
            return {"status": status, "detail": detail, "signal": None}
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= policy.limits.cpu_seconds):
            return {"status": "cpu_limit", "signal": sig,
                    "detail": f"CPU limit of {policy.limits.cpu_seconds} s"}
        if sig == signal.SIGSYS:
            return {"status": "killed", "signal": sig, "detail": "killed by seccomp (SIGSYS)"}
        if sig is not None:
            return {"status": "killed", "signal": sig, "detail": f"killed by signal {signal.Signals(sig).name}"}
        return {"status": "crashed", "signal": None,
                "detail": f"worker exited with status {os.WEXITSTATUS(wait_status)} without a report"}

    @staticmethod
    def _kill_group(pid: int) -> None:
        # The child made itself leader of a new session and process group
        # (setsid) before anything else; should it have died before that,
        # the group does not exist and the child alone is killed.
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    @staticmethod
    def _reap_orphans() -> None:
        """Reap every killed descendant re-parented to this subreaper."""
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                time.sleep(0.001)


def main(argv: list[str]) -> int:
    """Entry point: ``--path DIR`` and ``--module NAME`` options, then serve."""
    args = list(argv)
    while args:
        flag, value = args.pop(0), args.pop(0)
        if flag == "--path":
            sys.path.insert(0, value)
        elif flag == "--module":
            importlib.import_module(value)
    if os.environ.get("PYTHONHASHSEED") != CAGE_ENVIRONMENT["PYTHONHASHSEED"]:
        write_frame(1, {"t": "fatal", "detail": "fork server started without the cage environment"})
        return 2
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    server = ForkServer()
    # Everything imported so far is shared with each child copy-on-write;
    # frozen objects are never scanned by the collector, so a child does not
    # dirty (and copy) their pages just by collecting garbage.
    gc.freeze()
    write_frame(1, server.hello())
    while True:
        message = read_frame(0)
        if message is None:
            return 0
        try:
            policy = policy_from_value(message["policy"])
            write_frame(1, server.run(message["job"], policy))
        except Exception as exc:  # a bad request must not kill the server
            write_frame(1, {"t": "error", "detail": f"{type(exc).__name__}: {exc}"})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
