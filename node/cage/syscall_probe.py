"""Which syscalls a job makes that a policy's ``syscalls`` allow-list leaves out.

An allow-list such as the planning documents' ``["read", "write", "open",
"close"]`` cannot run a Python/DuckDB job (CPython alone needs mmap, futex,
fstat, ... and glibc opens files with ``openat``, not ``open``). To say which
syscalls are missing, a real job is run under the policy in the real cage
(the fork server's child, every layer applied) with one change: the filter
sends every syscall the allow-list leaves out to a listener
(``SECCOMP_RET_USER_NOTIF``) instead of answering EPERM. The listener, this
module running as the child's parent, records the syscall's number and lets
it run (``SECCOMP_USER_NOTIF_FLAG_CONTINUE``), so the job goes on as if the
syscall were allowed and every missing syscall is named in one run, not only
the first. Deny and kill rules act as in a real run.

The listener gets the notification descriptor the child's ``seccomp()`` call
created with ``pidfd_getfd`` (the child needs no help after its filter is
loaded: everything it does then may itself be waiting for the listener). It
needs Linux 5.6 or later (``pidfd_getfd``; CONTINUE is 5.5) and a parent
allowed to ptrace-read its child (Yama scope 0 or 1). Other methods were
ruled out: ``SECCOMP_RET_LOG`` writes to the kernel audit log, which an
unprivileged user cannot read; ``SECCOMP_RET_TRAP`` delivers the syscall
number in a siginfo that a Python signal handler never sees; an errno that
encodes the syscall number finds only the first missing syscall per run.

Runs as ``python -s -P -m node.cage.syscall_probe`` (its own fork server,
started the way :class:`node.cage.pool.CagePool` starts one):
:func:`probe_policy_syscalls` is the API.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.base.codec import CodecError
from node.cage import layers as L
from node.cage.job import CAGE_ENVIRONMENT, CageError, encode_frame, read_frame, split_frames, write_frame
from node.cage.policy import Policy, policy_from_value

# A job that goes through a job's usual paths: CSV sniffing and reading,
# hashing (GROUP BY, DISTINCT), a join, a window, sorting, result encoding.
PROBE_SQL = (
    "SELECT s.region, count(*) AS n, sum(s.amount) AS total, count(DISTINCT s.day) AS days, "
    "max(r.rank_in_region) AS deepest FROM sales AS s JOIN ("
    "SELECT region, day, row_number() OVER (PARTITION BY region ORDER BY amount DESC, day) AS rank_in_region "
    "FROM sales) AS r USING (region, day) GROUP BY s.region ORDER BY s.region"
)
PROBE_ROWS = 400

_SYS_PIDFD_OPEN = 434  # the same number on every architecture (the unified syscall table)
_SYS_PIDFD_GETFD = 438
_NOTIF_SIZE = 80  # struct seccomp_notif: id, pid, flags, struct seccomp_data (nr, arch, ip, args[6])
_NOTIF_RESP_SIZE = 24  # struct seccomp_notif_resp: id, val, error, flags
_USER_NOTIF_FLAG_CONTINUE = 1
_NOTIFY_FD_LINK = "anon_inode:seccomp notify"
STOP_GRACE_SECONDS = 2.0


def _iowr(nr: int, size: int) -> int:
    """_IOWR('!', nr, size) of include/uapi/linux/seccomp.h (generic ioctl encoding)."""
    return (3 << 30) | (size << 16) | (ord("!") << 8) | nr


SECCOMP_IOCTL_NOTIF_RECV = _iowr(0, _NOTIF_SIZE)
SECCOMP_IOCTL_NOTIF_SEND = _iowr(1, _NOTIF_RESP_SIZE)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


@dataclass(frozen=True)
class SyscallReport:
    """What one probe job did under a policy: its status and the syscalls it
    made that the policy's allow-list leaves out (sorted by name)."""

    policy: str
    status: str
    detail: str
    unlisted: tuple[str, ...]
    notifications: int

    @property
    def runs(self) -> bool:
        """The job succeeded and needed nothing beyond the allow-list."""
        return self.status == "ok" and not self.unlisted


def write_probe_input(directory: str | Path) -> Path:
    """The probe job's input: a small sales table (CSV) in ``directory``."""
    path = Path(directory) / "sales.csv"
    regions = ("north", "south", "east", "west")
    rows = (f"{regions[i % 4]},{i % 31 + 1},{(i * 37) % 1000 / 8}" for i in range(PROBE_ROWS))
    path.write_text("region,day,amount\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


class _Listener:
    """The parent's end of a child's seccomp notifications."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.pidfd = int(_libc.syscall(_SYS_PIDFD_OPEN, ctypes.c_int(pid), ctypes.c_uint(0)))
        if self.pidfd < 0:
            err = ctypes.get_errno()
            raise CageError(f"pidfd_open: {os.strerror(err)}")
        self.fd: int | None = None
        self.numbers: set[int] = set()
        self.count = 0

    def attach(self) -> bool:
        """Take the child's notification descriptor once its filter is loaded."""
        if self.fd is not None:
            return True
        try:
            names = os.listdir(f"/proc/{self.pid}/fd")
        except OSError:
            return False
        for name in names:
            try:
                if os.readlink(f"/proc/{self.pid}/fd/{name}") != _NOTIFY_FD_LINK:
                    continue
            except OSError:
                continue
            fd = int(_libc.syscall(_SYS_PIDFD_GETFD, ctypes.c_int(self.pidfd), ctypes.c_int(int(name)),
                                   ctypes.c_uint(0)))
            if fd < 0:
                err = ctypes.get_errno()
                raise CageError(f"pidfd_getfd: {os.strerror(err)} (the probe needs to ptrace-read its child)")
            self.fd = fd
            return True
        return False

    def answer(self) -> None:
        """Receive one notification, record its syscall, let it run."""
        assert self.fd is not None
        buffer = bytearray(_NOTIF_SIZE)
        try:
            fcntl.ioctl(self.fd, SECCOMP_IOCTL_NOTIF_RECV, buffer)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EINTR):  # the caller died or was interrupted meanwhile
                return
            raise
        notification_id, _pid, _flags, number = struct.unpack_from("=QIIi", buffer)
        self.numbers.add(number)
        self.count += 1
        response = bytearray(struct.pack("=QqiI", notification_id, 0, 0, _USER_NOTIF_FLAG_CONTINUE))
        try:
            fcntl.ioctl(self.fd, SECCOMP_IOCTL_NOTIF_SEND, response)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise

    def names(self) -> tuple[str, ...]:
        import pyseccomp

        arch = pyseccomp.system_arch()
        names = set()
        for number in self.numbers:
            try:
                names.add(pyseccomp.resolve_syscall(arch, number).decode())
            except (ValueError, OSError):
                names.add(f"syscall {number}")
        return tuple(sorted(names))

    def close(self) -> None:
        for fd in (self.fd, self.pidfd):
            if fd is not None and fd >= 0:
                os.close(fd)


def _probe(server: Any, policy: Policy, input_path: str, timeout: float) -> dict[str, Any]:
    """Run the probe job in ``server`` (a :class:`~node.cage.forkserver.ForkServer`)
    with the notifying filter, answering its notifications until it stops."""
    applied = [layer for layer in L.ALL_LAYERS if layer in server.caps.layers]
    if L.LAYER_SECCOMP not in applied:
        return {"t": "error", "detail": f"seccomp is not available here: {server.caps.detail.get(L.LAYER_SECCOMP, '')}"}
    output_dir = tempfile.mkdtemp(prefix="metanode-cage-probe-")
    job = {"kind": "sql", "sql": PROBE_SQL, "function": None, "params": {}, "inputs": {"sales": input_path},
           "seed": b"", "clock": 0, "output_dir": output_dir}
    prepared = {"inputs": [{"name": "sales", "path": input_path, "format": "csv"}], "output_dir": output_dir,
                "seed": bytes(32), "clock": 0}
    frame = encode_frame({"job": job, "prepared": prepared, "policy": policy.to_value(), "layers": applied,
                          "landlock_abi": server.caps.landlock_abi, "syscall_probe": True})
    deadline = time.monotonic() + timeout
    spare, _sent = server._hand_over(frame, deadline)
    listener = _Listener(spare.pid)
    result: dict[str, Any] | None = None
    buffer, ended, stopped, grace = b"", False, False, False
    try:
        while time.monotonic() < deadline and not stopped:
            attached = listener.attach()
            poller = select.poll()
            if not ended:
                poller.register(spare.report_fd, select.POLLIN | select.POLLHUP)
            if attached:
                poller.register(listener.fd, select.POLLIN)  # type: ignore[arg-type]
            for fd, _events in poller.poll(2 if not attached or result is not None else 50):
                if fd == listener.fd:
                    listener.answer()
                    continue
                chunk = os.read(spare.report_fd, 1 << 20)
                if not chunk:
                    ended = True
                    continue
                buffer += chunk
                frames, buffer = split_frames(buffer, max_size=64 << 20)
                for item in frames:
                    if isinstance(item, dict) and item.get("t") == "result":
                        result = item
            if result is not None or ended:
                # Wait for the child to stop itself (or exit): the syscalls it
                # makes on the way (kill, exit_group) are needed too.
                stopped = os.waitpid(spare.pid, os.WNOHANG | os.WUNTRACED)[0] != 0
                if not grace:
                    grace, deadline = True, min(deadline, time.monotonic() + STOP_GRACE_SECONDS)
        timed_out = not stopped
    finally:
        os.close(spare.report_fd)
        server._kill_group(spare.pid)
        try:
            os.waitpid(spare.pid, 0)
        except ChildProcessError:
            pass
        server._reap_orphans()
        listener.close()
        shutil.rmtree(output_dir, ignore_errors=True)
    if result is None:
        status, detail = ("timeout", f"no result within {timeout:g} s") if timed_out else (
            "crashed", "the probe job ended without a result")
    else:
        status, detail = str(result.get("status")), str(result.get("detail"))
    return {"t": "probe", "policy": policy.name, "status": status, "detail": detail,
            "unlisted": list(listener.names()), "notifications": listener.count}


def probe_policy_syscalls(policy: Policy, *, input_path: str | Path | None = None,
                          timeout: float = 60.0) -> SyscallReport:
    """Run the probe job under ``policy`` in a fresh fork server and report
    the syscalls it made that the policy's allow-list leaves out.

    ``policy`` must have an allow-list (``syscalls``). Raises CageError when
    the probe cannot run (no seccomp, no pidfd_getfd, the server died)."""
    if policy.syscalls is None:
        raise CageError(f"policy {policy.name!r} has no syscalls allow-list to probe")
    scratch = None
    if input_path is None:
        scratch = tempfile.mkdtemp(prefix="metanode-cage-probe-in-")
        input_path = write_probe_input(scratch)
    env = dict(CAGE_ENVIRONMENT)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    try:
        with tempfile.TemporaryFile() as stderr:
            process = subprocess.Popen(
                [sys.executable, "-s", "-P", "-m", "node.cage.syscall_probe"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env, cwd="/", close_fds=True,
            )
            assert process.stdin is not None and process.stdout is not None
            try:
                write_frame(process.stdin.fileno(), {"policy": policy.to_value(), "input": str(input_path),
                                                     "timeout_ms": int(timeout * 1000)})
                process.stdin.close()
                try:
                    reply = read_frame(process.stdout.fileno())
                except (CodecError, OSError) as exc:
                    reply = {"t": "error", "detail": f"bad frame from the probe: {exc}"}
            finally:
                process.stdout.close()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if not isinstance(reply, dict) or reply.get("t") != "probe":
                stderr.seek(0)
                tail = stderr.read().decode(errors="replace").strip().splitlines()
                detail = reply.get("detail") if isinstance(reply, dict) else None
                raise CageError(f"syscall probe failed: {detail or (tail[-1] if tail else 'no reply')}")
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return SyscallReport(policy=str(reply["policy"]), status=str(reply["status"]), detail=str(reply["detail"]),
                         unlisted=tuple(str(n) for n in reply["unlisted"]),
                         notifications=int(reply["notifications"]))


def main() -> int:
    """Entry point: read one ``{"policy", "input", "timeout_ms"}`` frame, probe, reply."""
    from node.cage.forkserver import ForkServer

    message = read_frame(0)
    if not isinstance(message, dict):
        write_frame(1, {"t": "error", "detail": "no probe request"})
        return 2
    server = ForkServer()
    try:
        policy = policy_from_value(message["policy"])
        reply = _probe(server, policy, str(message["input"]), message["timeout_ms"] / 1000)
    except Exception as exc:  # reported, never a traceback on the caller's terminal
        reply = {"t": "error", "detail": f"{type(exc).__name__}: {exc}"}
    finally:
        server.close()
    write_frame(1, reply)
    return 0


if __name__ == "__main__":
    sys.exit(main())
