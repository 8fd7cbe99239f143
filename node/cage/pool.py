"""CagePool: the API the rest of metanode uses to run caged jobs.

A pool starts ``size`` fork servers once (each imports Python, DuckDB and
the registered functions, then forks a fresh child per job, ahead of the
job; the child confines itself once it has its job, and runs only that
one).
:meth:`CagePool.run` blocks and is thread-safe; from trio use
:meth:`CagePool.run_async`, which runs it in a worker thread.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from node.base.codec import CodecError
from node.cage.job import CAGE_ENVIRONMENT, CageError, JobOutcome, JobSpec, read_frame, write_frame
from node.cage.layers import HostCapabilities
from node.cage.policy import Policy, default_policy_path, load_policies, missing_layers

DEFAULT_FUNCTION_MODULES = ("node.cage.functions", "node.cage.trend")


class _Server:
    """One fork server process and its frame pipes."""

    def __init__(self, python_path: Sequence[str], modules: Sequence[str]) -> None:
        args = [sys.executable, "-s", "-P", "-m", "node.cage.forkserver"]
        for path in python_path:
            args += ["--path", str(path)]
        for module in modules:
            args += ["--module", module]
        env = dict(CAGE_ENVIRONMENT)
        # The package must stay importable when it is not installed (a checkout).
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
        self.stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
            env=env, cwd="/", close_fds=True,
        )
        hello = self._receive()
        if not isinstance(hello, dict) or hello.get("t") != "hello":
            detail = hello.get("detail") if isinstance(hello, dict) else None
            self.close()
            raise CageError(f"cage fork server failed to start: {detail or self._stderr_tail()}")
        self.hello = hello

    def _stderr_tail(self) -> str:
        self.stderr.seek(0)
        lines = self.stderr.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"exit status {self.process.poll()}"

    def _receive(self) -> Any:
        try:
            return read_frame(self.process.stdout.fileno())  # type: ignore[union-attr]
        except (CodecError, OSError) as exc:
            return {"t": "fatal", "detail": f"bad frame from fork server: {exc}"}

    def request(self, message: dict[str, Any]) -> Any:
        try:
            write_frame(self.process.stdin.fileno(), message)  # type: ignore[union-attr]
        except (BrokenPipeError, OSError):
            return None
        return self._receive()

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        if self.process.stdin and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()
        self.stderr.close()


class CagePool:
    """Pre-started fork servers that run :class:`JobSpec` jobs in the cage.

    ``policies``: a mapping of name -> Policy, or a policy file path, or None
    for config/policies.toml. ``function_modules`` are imported by each fork
    server so their ``@register_function`` functions can run; ``python_path``
    entries are put in front of its ``sys.path`` first.

    Start the pool before a daemon confines itself (:func:`confine_service`
    denies exec, so fork servers cannot be started afterwards)."""

    def __init__(
        self,
        policies: Mapping[str, Policy] | str | Path | None = None,
        *,
        size: int = 1,
        function_modules: Sequence[str] = (),
        python_path: Sequence[str] = (),
    ) -> None:
        if policies is None or isinstance(policies, (str, Path)):
            policies = load_policies(policies or default_policy_path())
        self.policies: dict[str, Policy] = dict(policies)
        if size < 1:
            raise CageError("cage pool size must be at least 1")
        self._modules = tuple(dict.fromkeys([*DEFAULT_FUNCTION_MODULES, *function_modules]))
        self._python_path = tuple(str(p) for p in python_path)
        self._idle: queue.Queue[_Server] = queue.Queue()
        self._servers: list[_Server] = []
        self._lock = threading.Lock()
        self._closed = False
        for _ in range(size):
            server = _Server(self._python_path, self._modules)
            self._servers.append(server)
            self._idle.put(server)
        first = self._servers[0].hello
        self.capabilities = HostCapabilities.from_value(first["capabilities"])
        self.versions: dict[str, str] = dict(first["versions"])
        self.worker_digest: bytes = first["worker_digest"]
        self.functions: dict[str, bytes] = dict(first["functions"])

    def __enter__(self) -> "CagePool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_policy(self, policy: Policy) -> None:
        """Raise CageError if this host cannot enforce ``policy`` (names the layer)."""
        if policy.allows_network:
            raise CageError(
                f"policy {policy.name!r} allows the network, but jobs never get network; "
                "use a job policy such as 'processing'"
            )
        missing = missing_layers(policy, self.capabilities.layers)
        if missing:
            details = "; ".join(f"{m}: {self.capabilities.detail.get(m, 'unavailable')}" for m in missing)
            raise CageError(
                f"policy {policy.name!r} ({policy.enforcement_level}) cannot run on this host: "
                f"missing {', '.join(missing)} ({details})"
            )

    def run(self, job: JobSpec, *, policy: Policy | None = None) -> JobOutcome:
        """Run one job and return its outcome (blocking, thread-safe).

        ``policy`` overrides the named one (replay uses the recorded policy).
        Raises CageError if the job or policy cannot be run at all."""
        if self._closed:
            raise CageError("the cage pool is closed")
        job.validate()
        if policy is None:
            policy = self.policies.get(job.policy)
            if policy is None:
                raise CageError(f"job.policy: unknown policy {job.policy!r} (known: {', '.join(sorted(self.policies))})")
        self.check_policy(policy)
        if job.kind == "python-fn" and job.function not in self.functions:
            known = ", ".join(sorted(self.functions)) or "none"
            raise CageError(f"job.function: no registered function {job.function!r} (registered: {known})")
        server = self._idle.get()
        try:
            reply = server.request({"t": "job", "job": job.to_value(), "policy": policy.to_value()})
            if reply is None or reply.get("t") == "fatal":
                server = self._replace(server)
                raise CageError("the cage fork server died while running the job")
        finally:
            self._idle.put(server)
        kind = reply.get("t")
        if kind == "outcome":
            return JobOutcome.from_value({k: v for k, v in reply.items() if k != "t"})
        if kind == "unenforceable":
            raise CageError(f"policy {reply['policy']!r} ({reply['level']}) cannot run on this host: "
                            f"missing {', '.join(reply['missing'])}")
        raise CageError(f"cage fork server: {reply.get('detail', 'unexpected reply')}")

    async def run_async(self, job: JobSpec, *, policy: Policy | None = None) -> JobOutcome:
        """:meth:`run` from trio, in a worker thread (the job's own wall-clock
        limit bounds it; a trio cancel waits for that)."""
        import trio

        return await trio.to_thread.run_sync(lambda: self.run(job, policy=policy))

    def _replace(self, dead: _Server) -> _Server:
        with self._lock:
            dead.close()
            fresh = _Server(self._python_path, self._modules)
            self._servers[self._servers.index(dead)] = fresh
            return fresh

    def close(self) -> None:
        """Stop every fork server (waits for running jobs to finish)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for server in self._servers:
            server.close()

