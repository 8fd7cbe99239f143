"""The fork server: imports Python, DuckDB and the registered functions
once, then forks one fresh child per job and supervises it.

Started by :class:`node.cage.pool.CagePool` as
``python -s -P -m node.cage.forkserver`` with the scrubbed cage
environment. It speaks frames on stdin/stdout: a ``hello`` first (host
capabilities, versions, worker digest), then one ``outcome`` per ``job``.
It stays single-threaded (DuckDB is opened with no background threads) so
that forking it is safe and each child confines a single thread.

The child for the next job is forked as soon as the previous outcome is
sent (a "spare", see :mod:`node.cage.spare`): forking and warming up a
child happen while no job waits. The spare receives its job over a pipe
and only then confines itself, fresh, for that job; it runs one job.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import os
import platform
import resource
import select
import shutil
import signal
import sys
import tempfile
import time
from typing import Any

import duckdb

from node.cage import layers as L
from node.cage.functions import get_function, registered_functions
from node.cage.job import CAGE_ENVIRONMENT, encode_frame, read_frame, split_frames, write_frame
from node.cage.policy import Policy, missing_layers, policy_from_value
from node.cage.results import result_digest
from node.cage.spare import rehearse, spare_child
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
from node.cage.worker import _realpath, job_filter

try:  # loaded here, once: importing it runs find_library, which a confined child cannot
    import pyseccomp  # noqa: F401
except (ImportError, OSError):  # the probe then reports seccomp as unavailable
    pass

PR_SET_CHILD_SUBREAPER = 36
WARM_UP_ROWS = 200
STOP_GRACE_SECONDS = 1.0


class _Spare:
    """A forked child waiting for its job: its pid, the pipe its job frame
    goes down, and the pipe its reports come up."""

    def __init__(self, pid: int, job_fd: int, report_fd: int) -> None:
        self.pid, self.job_fd, self.report_fd = pid, job_fd, report_fd


def _write_before(fd: int, data: bytes, deadline: float) -> bool:
    """Write all of ``data`` to a pipe unless ``deadline`` passes first
    (False). BrokenPipeError if the reader has gone."""
    os.set_blocking(fd, False)
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    view = memoryview(data)
    while view:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if not poller.poll(int(remaining * 1000) + 1):
            continue
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            continue
    return True


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
        self.spare: _Spare | None = None
        self._unreaped: int | None = None  # the last job's child, killed, not yet reaped
        self.warm_dir = tempfile.mkdtemp(prefix="metanode-cage-warm-")
        self.warm_files = {"csv": os.path.join(self.warm_dir, "w.csv"),
                           "parquet": os.path.join(self.warm_dir, "w.parquet")}
        self._warm_up()
        self.caps = L.probe_host()
        for path in L.runtime_read_paths():
            _realpath(path)
        self.worker_digest = worker_digest()
        self.versions = {"duckdb": duckdb.__version__, "python": platform.python_version()}

    def _warm_up(self) -> None:
        """Write the rehearsal files every child warms up on, and pay the
        first-use costs (lazy modules, the CSV and Parquet readers, the
        parser's JSON export) once here. Only queries run: the instance's
        catalog stays empty."""
        with open(self.warm_files["csv"], "w", encoding="utf-8") as handle:
            handle.write("k,v,t\n" + "".join(f"{i % 7},{i * 0.25},t{i % 3}\n" for i in range(WARM_UP_ROWS)))
        csv, parquet = self.warm_files["csv"], self.warm_files["parquet"]
        self.base.execute(f"COPY (SELECT * FROM read_csv('{csv}')) TO '{parquet}' (FORMAT parquet)").fetchall()
        duckdb.extract_statements("SELECT 1")
        rehearse(self.base, self.warm_files)

    def spawn_spare(self) -> None:
        """Fork the child for the next job, unless one is already waiting."""
        if self.spare is not None:
            return
        job_read, job_write = os.pipe()
        report_read, report_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child; spare_child never returns
            try:
                spare_child(self.base, job_read, report_write, self.warm_files)
            finally:
                os._exit(1)
        os.close(job_read)
        os.close(report_write)
        self.spare = _Spare(pid, job_write, report_read)

    def _discard(self, spare: _Spare) -> None:
        for fd in (spare.job_fd, spare.report_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self._kill_group(spare.pid)
        os.waitpid(spare.pid, 0)

    def _hand_over(self, frame: bytes, deadline: float) -> tuple[_Spare, bool]:
        """Send the job frame to the waiting child, or to a freshly forked
        one if that has died. Returns the child and whether the frame went
        before the deadline; the child's job pipe is closed either way."""
        try:
            return self._send_to_spare(frame, deadline)
        except BrokenPipeError:  # it died while it waited
            return self._send_to_spare(frame, deadline)

    def _send_to_spare(self, frame: bytes, deadline: float) -> tuple[_Spare, bool]:
        self.spawn_spare()
        spare, self.spare = self.spare, None
        assert spare is not None
        try:
            sent = _write_before(spare.job_fd, frame, deadline)
        except BrokenPipeError:
            self._discard(spare)
            raise
        os.close(spare.job_fd)
        return spare, sent

    def close(self) -> None:
        """Stop the waiting child, reap the last job's, and remove the
        rehearsal files."""
        if self.spare is not None:
            spare, self.spare = self.spare, None
            self._discard(spare)
        self.reap_finished()
        shutil.rmtree(self.warm_dir, ignore_errors=True)

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
            job_filter(policy.deny, policy.kill, policy.syscalls)  # built here once, loaded by the child
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
        frame = encode_frame({"job": job, "prepared": prepared, "policy": policy.to_value(),
                              "layers": applied, "landlock_abi": self.caps.landlock_abi})
        started = time.monotonic()
        deadline = started + policy.limits.wall_clock_seconds
        spare, sent = self._hand_over(frame, deadline)
        pid, read_fd = spare.pid, spare.report_fd
        # Inputs are hashed for the witness while the child already runs.
        described = describe_inputs(job["inputs"])
        cap = policy.limits.output_mb * 1024 * 1024 + 1024 * 1024
        buffer, frames, timed_out, overflow, garbled = b"", [], not sent, False, ""
        poller = select.poll()
        poller.register(read_fd, select.POLLIN | select.POLLHUP)
        while not timed_out:
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
            if any(isinstance(item, dict) and item.get("t") == "result" for item in new):
                break  # the child stops itself after its result; no end of stream comes
        os.close(read_fd)
        reported = any(isinstance(item, dict) and item.get("t") == "result" for item in frames)
        # Without fork, a job cannot leave other processes behind to reap first.
        alone = L.LAYER_SECCOMP in applied and policy.blocks("fork")
        wait_status, usage, stopped_late = self._end_child(
            pid, reported and not overflow and not garbled, alone, deadline)
        timed_out = timed_out or stopped_late
        wall = time.monotonic() - started
        report: dict[str, Any] = {"denials": [], "result": None}
        result_frame = None
        child_cpu = usage.ru_utime + usage.ru_stime
        before_job = 0.0
        # The child's first frame, written before the job's code runs, gives
        # the CPU time it spent before the job (its rehearsal).
        if frames and isinstance(frames[0], dict) and frames[0].get("t") == "started":
            cpu_us = frames.pop(0).get("cpu_us")
            if isinstance(cpu_us, int):
                before_job = min(max(cpu_us / 1e6, 0.0), child_cpu)
        for item in frames:
            if isinstance(item, dict) and item.get("t") == "denial":
                report["denials"].append({k: str(item.get(k, "")) for k in ("op", "target", "layer")})
            elif isinstance(item, dict) and item.get("t") == "result":
                result_frame = item
        job_cpu = child_cpu - before_job
        exit_info = self._exit_info(wait_status, job_cpu, policy, result_frame, timed_out, overflow, garbled)
        if exit_info["status"] == "ok":
            report["result"] = result_frame.get("result")  # type: ignore[union-attr]
        observed = {"wall_us": int(wall * 1e6), "cpu_us": int(job_cpu * 1e6),
                    "max_rss_kb": int(usage.ru_maxrss)}
        return report, exit_info, observed, described

    @staticmethod
    def _exit_info(wait_status: int, cpu: float, policy: Policy, frame: dict[str, Any] | None,
                   timed_out: bool, overflow: bool, garbled: str) -> dict[str, Any]:
        sig = os.WTERMSIG(wait_status) if os.WIFSIGNALED(wait_status) else None
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

    def _end_child(self, pid: int, reported: bool, alone: bool, deadline: float) -> tuple[int, Any, bool]:
        """Kill the job's process group; return the child's wait status and
        resource use, and whether the wall-clock deadline passed first.

        A child that has reported its result stops itself (SIGSTOP): its
        status and usage are read while it is stopped, so the outcome does
        not wait for its address space to be torn down. When it is
        ``alone`` in its group, reaping it is left to :meth:`reap_finished`,
        after the outcome is sent; otherwise every process of the job is
        reaped first, so none can still write to the output directory."""
        if reported:
            # It stops within microseconds of its result frame; a little grace
            # keeps a result that came just before the deadline from timing out.
            stop_deadline = max(deadline, time.monotonic() + STOP_GRACE_SECONDS)
            while True:
                done, status, usage = os.wait4(pid, os.WNOHANG | os.WUNTRACED)
                if done or time.monotonic() >= stop_deadline:
                    break
                time.sleep(0.0001)
            if done:
                self._kill_group(pid)
                if not os.WIFSTOPPED(status):  # it died instead of stopping, and is reaped
                    self._reap_orphans()
                elif alone:
                    self._unreaped = pid
                else:
                    os.wait4(pid, 0)
                    self._reap_orphans()
                return status, usage, False
        self._kill_group(pid)
        _, status, usage = os.wait4(pid, 0)
        self._reap_orphans()
        return status, usage, reported

    def reap_finished(self) -> None:
        """Reap the last job's child, killed after it stopped (tearing down
        its address space takes a few milliseconds, spent here between jobs)."""
        if self._unreaped is not None:
            pid, self._unreaped = self._unreaped, None
            os.waitpid(pid, 0)
            self._reap_orphans()

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
    try:
        # Everything imported so far is shared with each child copy-on-write;
        # frozen objects are never scanned by the collector, so a child does not
        # dirty (and copy) their pages just by collecting garbage.
        gc.freeze()
        write_frame(1, server.hello())
        while True:
            server.reap_finished()
            server.spawn_spare()  # the next job's child starts while no job waits
            message = read_frame(0)
            if message is None:
                return 0
            try:
                policy = policy_from_value(message["policy"])
                write_frame(1, server.run(message["job"], policy))
            except Exception as exc:  # a bad request must not kill the server
                write_frame(1, {"t": "error", "detail": f"{type(exc).__name__}: {exc}"})
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
