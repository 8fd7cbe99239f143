"""Reproduce a kill -9 inside a DuckDB checkpoint write, deterministically.

    .venv/bin/python scripts/torn_write_repro.py                 # block 0, kills 3,5,8,12
    .venv/bin/python scripts/torn_write_repro.py --offset -1 --nth 1-80   # any block

When SIGKILL arrives during a large write(2), Linux stops copying between
pages, so only a prefix of the buffer reaches the file. A random kill rarely
lands there (the block-0 write of a checkpoint takes microseconds unless the
writer is throttled, as under CI load); this LD_PRELOAD shim (built with the
system C compiler into a temporary directory) makes the child of
tests/consensus/test_store_crash.py write only ``--bytes`` of its Nth large
write at ``--offset`` of node.duckdb and then SIGKILL itself. Each run then
reopens the store with the test's own consistency check and prints the result.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "consensus"))

import test_store_crash as crash  # type: ignore[import-not-found]  # noqa: E402

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static long count;
static int is_db(int fd) {
    char link[64], target[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n <= 0) return 0;
    target[n] = 0;
    size_t len = strlen(target), sl = strlen("node.duckdb");
    return len >= sl && strcmp(target + len - sl, "node.duckdb") == 0;
}
ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) {
    if (!real_pwrite) real_pwrite = dlsym(RTLD_NEXT, "pwrite64");
    const char *want = getenv("TORN_OFFSET");
    if (want && n > 4096 && is_db(fd) && (atol(want) == -1 || atol(want) == (long)off)
            && ++count == atol(getenv("TORN_NTH"))) {
        real_pwrite(fd, buf, (size_t)atol(getenv("TORN_BYTES")), off);
        kill(getpid(), SIGKILL);
    }
    return real_pwrite(fd, buf, n, off);
}
ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) { return pwrite64(fd, buf, n, off); }
"""


def build_shim(work: Path) -> Path:
    source, shim = work / "torn.c", work / "torn.so"
    source.write_text(SHIM)
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("torn_write_repro: needs a C compiler (cc or gcc) to build its LD_PRELOAD shim")
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(shim), str(source), "-ldl"], check=True)
    return shim


def run_once(shim: Path, offset: int, nth: int, nbytes: int) -> str:
    data_dir = Path(tempfile.mkdtemp(prefix="torn-"))
    env = dict(os.environ, LD_PRELOAD=str(shim), TORN_OFFSET=str(offset), TORN_NTH=str(nth), TORN_BYTES=str(nbytes))
    try:
        child = subprocess.run([sys.executable, crash.__file__, str(data_dir)], env=env,
                               capture_output=True, text=True, timeout=600)
        heights = child.stdout.split()[1:]
        try:
            head = crash.check_consistent(data_dir)
        except Exception as exc:  # the finding, printed rather than raised
            return f"FAIL (child rc {child.returncode}): {str(exc).splitlines()[0][:200]}"
        return f"ok: reopened at {head}, child reported {heights[-1] if heights else 'nothing'}"
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def parse_nth(text: str) -> list[int]:
    if "-" in text:
        low, high = text.split("-", 1)
        return list(range(int(low), int(high) + 1))
    return [int(part) for part in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--offset", type=int, default=12288, help="file offset of the torn write (-1: any)")
    parser.add_argument("--nth", default="3,5,8,12", help="which matching writes to tear: 3,5,8 or 1-80")
    parser.add_argument("--bytes", type=int, default=4096, help="bytes of the write that reach the file")
    args = parser.parse_args(argv)
    failures = 0
    with tempfile.TemporaryDirectory() as work:
        shim = build_shim(Path(work))
        for nth in parse_nth(args.nth):
            result = run_once(shim, args.offset, nth, args.bytes)
            failures += result.startswith("FAIL")
            print(f"offset {args.offset} write #{nth} torn after {args.bytes} bytes: {result}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
