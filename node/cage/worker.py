"""The confined child: applies the layers in order, runs one job, reports.

Runs in a child the fork server forked ahead of its job (see
:mod:`node.cage.spare`), once the job has been received. In this order:
rlimits, user+net namespaces, Landlock, seccomp, then DuckDB's sandbox
(threads=1, allowed paths, no external access, configuration locked), the
input views, then the job. The DuckDB database instance was created by the
fork server with no background threads (threads=1, async_threads=0), so
this process is single-threaded while it confines itself and every thread
DuckDB might start later inherits every layer.

Denied operations the job attempts are seen through Python audit hooks and
written to the report pipe at once, so a denial is recorded even when the
next instant the kernel kills the process for it.
"""

from __future__ import annotations

import functools
import os
import random
import resource
import signal
import sys
import traceback
from typing import TYPE_CHECKING, Any, NoReturn

import duckdb

from node.cage import layers as L
from node.cage.functions import JobContext, Table, get_function, quote_identifier
from node.cage.inputs import create_input_views
from node.cage.job import write_frame
from node.cage.policy import Policy, policy_from_value
from node.cage.results import NATIVE_TYPES, ResultError, encode_result
from node.cage.sqlgate import SqlRefused, gate_sql_texts, has_top_level_order, parse_tree

if TYPE_CHECKING:
    from pyseccomp import SyscallFilter  # untyped: Any to the checker

MAX_DENIALS = 100
_O_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


@functools.lru_cache(maxsize=256)
def _realpath(path: str) -> str:
    # Cached: the fork server resolves the runtime paths once for all children.
    return os.path.realpath(path)


class _DenialRecorder:
    """Audit hook: reports every attempted operation this job's policy denies."""

    def __init__(self, report_fd: int, policy: Policy, read_roots: list[str], write_root: str) -> None:
        self.fd = report_fd
        self.blocked = {group for group in ("socket", "exec", "fork", "random") if policy.blocks(group)}
        self.read_roots = [_realpath(p) for p in read_roots]
        self.write_root = os.path.realpath(write_root)
        self.count = 0
        self.active = False

    def record(self, op: str, target: str, layer: str) -> None:
        self.count += 1
        if self.count <= MAX_DENIALS:
            write_frame(self.fd, {"t": "denial", "op": op, "target": target, "layer": layer})

    @staticmethod
    def _under(path: str, root: str) -> bool:
        return path == root or path.startswith(root.rstrip("/") + "/")

    def _path_denied(self, path: Any, writing: bool) -> bool:
        if not isinstance(path, (str, bytes)):
            return False  # an already-open file descriptor
        real = os.path.realpath(os.fsdecode(path))
        if self._under(real, self.write_root):
            return False
        return writing or not any(self._under(real, root) for root in self.read_roots)

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active:
            return
        self.active = False  # our own file checks must not recurse into the hook
        try:
            self._check(event, args)
        finally:
            self.active = True

    def _check(self, event: str, args: tuple[Any, ...]) -> None:
        if event == "socket.__new__" and "socket" in self.blocked:
            self.record("socket", f"family={int(args[1])}", "seccomp")
        elif event in ("os.exec", "os.posix_spawn") and "exec" in self.blocked:
            self.record("exec", os.fsdecode(args[0]), "seccomp")
        elif event in ("os.fork", "subprocess.Popen") and "fork" in self.blocked:
            self.record("fork", event, "seccomp")
        elif event == "open":
            path, mode, flags = args
            writing = bool(flags & _O_WRITE) or any(c in str(mode or "") for c in "wax+")
            if self._path_denied(path, writing):
                self.record("open", f"{'write' if writing else 'read'} {os.fsdecode(path)}", "landlock")
        elif event in ("os.listdir", "os.scandir") and self._path_denied(args[0] or ".", False):
            self.record("listdir", os.fsdecode(args[0]), "landlock")


def _guard_urandom(recorder: _DenialRecorder) -> None:
    """os.urandom has no audit event: wrap it so a denied read of the host's
    entropy is recorded before seccomp refuses it."""
    original = os.urandom

    def urandom(size: int) -> bytes:
        recorder.record("random", f"os.urandom({size})", "seccomp")
        return original(size)

    os.urandom = urandom


def _confine(policy: Policy, layers: list[str], abi: int, read_paths: list[str], output_dir: str,
             cpu_used: float, *, syscall_probe: bool = False) -> None:
    if L.LAYER_RLIMITS in layers:
        # The rehearsal's CPU time is not charged to the job.
        L.apply_rlimits(policy.limits, cpu_already_used=cpu_used)
    if L.LAYER_NAMESPACES in layers:
        L.unshare_user_and_network()
    if L.LAYER_LANDLOCK in layers:
        L.landlock_restrict(read_paths, [output_dir], abi=abi, scope_signals=True)
    if L.LAYER_SECCOMP in layers:
        L.set_no_new_privs()
        job_filter(policy.deny, policy.kill, policy.syscalls, syscall_probe).load()


@functools.lru_cache(maxsize=16)
def job_filter(deny: tuple[str, ...], kill: tuple[str, ...], allow: tuple[str, ...] | None = None,
               syscall_probe: bool = False) -> SyscallFilter:
    """The seccomp filter of a job policy; built (and cached) in the fork
    server, so a child forked after the policy's first job only loads it.
    Jobs also may not leave their process group ("session"), which the
    supervisor kills on timeout. ``allow``: the policy's allow-list;
    ``syscall_probe`` hands the syscalls it leaves out to the probe's
    listener instead of refusing them (node/cage/syscall_probe.py)."""
    from node.cage.syscalls import build_filter

    return build_filter([*deny, "session"], kill, allow=allow, notify_unlisted=syscall_probe)


def _lock_duckdb(con: duckdb.DuckDBPyConnection, policy: Policy, inputs: list[dict[str, Any]],
                 output_dir: str) -> None:
    paths = [item["path"] for item in inputs]
    memory = max(64, policy.limits.memory_mb // 2)
    for statement, value in (
        ("SET allowed_paths = $v", paths),
        ("SET allowed_directories = $v", [output_dir.rstrip("/") + "/"]),
        ("SET autoinstall_known_extensions = false", None),
        ("SET autoload_known_extensions = false", None),
        (f"SET memory_limit = '{memory}MB'", None),
        ("SET temp_directory = ''", None),
        ("SET enable_external_access = false", None),
        ("SET lock_configuration = true", None),
    ):
        con.execute(statement, {"v": value} if value is not None else None)
    create_input_views(con, inputs)


def wrap_select(sql: str) -> str:
    """``sql`` as a subquery of ``SELECT * FROM (...)``."""
    return f"SELECT * FROM ({sql.strip().rstrip(';')}\n) AS job_result"


def orders_rows(con: duckdb.DuckDBPyConnection, sql: str) -> bool:
    """True if ``sql``'s outermost query has an ORDER BY, from DuckDB's own
    parse. A statement the parse tree cannot describe counts as unordered
    (its rows are then sorted canonically, which is always deterministic)."""
    try:
        return has_top_level_order(parse_tree(con, sql))
    except SqlRefused:
        return False


def canonical_query(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any] | None, *,
                    ordered: bool | None = None) -> Table:
    """Run one SELECT and fetch it as a Table whose values encode exactly.
    When a column has a non-native type (nested, TIMESTAMPTZ, UUID...), the
    query runs again with that column cast to text by the engine. The Table
    is ``ordered`` when the SELECT has a top-level ORDER BY (``ordered``
    None: found out from the parse; the wrapping subquery keeps the order)."""
    if ordered is None:
        ordered = orders_rows(con, sql)
    wrapped = wrap_select(sql)
    con.execute(wrapped, params or None)
    described = [(name, kind) for name, kind, *_ in con.description]
    columns = [(name, str(kind)) for name, kind in described]
    if all(kind.id in NATIVE_TYPES for _, kind in described):
        return Table(columns, con.fetchall(), ordered)
    con.fetchmany(0)
    con.execute("SELECT 1").fetchall()  # finish the first result before the next
    projections = [
        quote_identifier(name) if kind.id in NATIVE_TYPES
        else f"CAST({quote_identifier(name)} AS VARCHAR) AS {quote_identifier(name)}"
        for name, kind in described
    ]
    con.execute(wrapped.replace("SELECT *", f"SELECT {', '.join(projections)}", 1), params or None)
    return Table(columns, con.fetchall(), ordered)


def _run_job(con: duckdb.DuckDBPyConnection, job: dict[str, Any], prepared: dict[str, Any],
             policy: Policy) -> bytes:
    names = {item["name"] for item in prepared["inputs"]}
    seed: bytes = prepared["seed"]
    seeded = policy.rng_seed_source == "deterministic"
    if seeded:
        con.execute("SELECT setseed($s)", {"s": int.from_bytes(seed[:4], "big") / 2**32}).fetchall()
        random.seed(seed)
    if job["kind"] == "sql":
        # Gate the text as given and as it will run (wrapped as a subquery).
        tree, _ = gate_sql_texts(con, [job["sql"], wrap_select(job["sql"])], inputs=names, seeded=seeded,
                                 clock_allowed=policy.clock_source == "host")
        table = canonical_query(con, job["sql"], job["params"], ordered=has_top_level_order(tree))
        return encode_result(table.columns, table.rows, ordered=table.ordered)
    entry = get_function(job["function"])
    ctx = JobContext(con=con, inputs={n: n for n in sorted(names)}, output_dir=prepared["output_dir"],
                     seed=seed, clock=prepared["clock"], rng=random.Random(seed),
                     query=lambda sql, params=None: canonical_query(con, sql, params))
    value = entry.function(ctx, dict(job["params"]))
    if isinstance(value, Table):
        return encode_result(value.columns, value.rows, ordered=value.ordered)
    raise ResultError(f"function {job['function']!r} returned {type(value).__name__}, not a Table")


def _classify(exc: BaseException) -> tuple[str, str]:
    text = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}".rstrip(": ")
    if isinstance(exc, SqlRefused):
        return "refused", f"SQL refused: {exc}"
    if isinstance(exc, MemoryError) or isinstance(exc, duckdb.OutOfMemoryException):
        return "memory_limit", text
    if isinstance(exc, OSError) and exc.errno == 27:  # EFBIG: RLIMIT_FSIZE
        return "output_limit", text
    return "error", text


def cpu_seconds() -> float:
    """CPU time this process has used so far (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_child(base: duckdb.DuckDBPyConnection, message: dict[str, Any], report_fd: int) -> NoReturn:
    """Run the job in ``message`` (``job``, ``prepared``, ``policy``, ``layers``,
    ``landlock_abi``) in this detached child: confine, lock DuckDB, run,
    report. Never returns; always reports one result frame."""
    status, detail, result = "error", "worker failed before the job started", None
    try:
        # CPU time spent before the job (the rehearsal) is not charged to it.
        cpu_used = cpu_seconds()
        write_frame(report_fd, {"t": "started", "cpu_us": int(cpu_used * 1e6)})
        job, prepared = message["job"], message["prepared"]
        policy = policy_from_value(message["policy"])
        output_dir = prepared["output_dir"]
        os.chdir(output_dir)
        read_paths = L.runtime_read_paths() + [item["path"] for item in prepared["inputs"]]
        recorder = _DenialRecorder(report_fd, policy, read_paths, output_dir)
        sys.addaudithook(recorder)
        if "random" in recorder.blocked:
            _guard_urandom(recorder)
        if L.thread_count() != 1:
            raise RuntimeError("the worker must be single-threaded to confine itself")
        _confine(policy, message["layers"], message["landlock_abi"], read_paths, output_dir, cpu_used,
                 syscall_probe=bool(message.get("syscall_probe")))
        con = base.cursor()
        _lock_duckdb(con, policy, prepared["inputs"], output_dir)
        recorder.active = True
        try:
            result = _run_job(con, job, prepared, policy)
            status, detail = "ok", ""
        finally:
            recorder.active = False
        if recorder.count > MAX_DENIALS:
            write_frame(report_fd, {"t": "denial", "op": "more", "target": str(recorder.count - MAX_DENIALS),
                                    "layer": ""})
    except BaseException as exc:  # everything is reported; nothing escapes the child
        status, detail = _classify(exc)
        if status == "error" and not isinstance(exc, (duckdb.Error, ValueError, KeyError, OSError)):
            detail += " | " + traceback.format_exc(limit=3).strip().splitlines()[-1]
    try:
        write_frame(report_fd, {"t": "result", "status": status, "detail": detail, "result": result})
        # Stop rather than exit: the supervisor reads this process's status
        # and resource use while it is stopped, and has it killed and torn
        # down (which takes milliseconds) after the outcome is sent.
        os.kill(os.getpid(), signal.SIGSTOP)
    finally:
        os._exit(0)
