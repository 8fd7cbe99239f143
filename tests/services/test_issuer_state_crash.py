"""The receipt issuer's state under real process deaths: a process issuing
receipts as fast as it can is killed with SIGKILL at random points; each
restart continues from the last receipt it returned (or the one it had just
made durable and not yet returned), so no ``prev`` is used twice. A daemon
whose issuer state is damaged stops at start with one line and exit code 5."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import duckdb

from node.base.errors import EXIT_DATA_DIR
from node.base.keys import Identity
from node.receipts.chain import ReceiptIssuer
from node.roles.issuer import FILE_SIZE, ISSUER_FILENAME, NodeIssuer
from tests.consensus.test_chain_rpc import single_validator
from tests.support import run_cli

LABEL = "issuer-crash-node"
FIELDS = {"method": "analytics_submit", "tenant": bytes(32), "outcome": "accepted", "code": 0, "response": bytes(32)}
# The child issues receipts n = start, start + 1, ... (subject n) and prints "n id" once each is returned.
CHILD = f"""
import sys, duckdb
from node.base.keys import Identity
from node.roles.issuer import NodeIssuer
conn = duckdb.connect(sys.argv[1])
issuer = NodeIssuer(conn, Identity.from_label({LABEL!r}))
print("head", issuer.prev_id.hex() if issuer.prev_id else "-", flush=True)
n = int(sys.argv[2])
while True:
    r = issuer.issue("api.call", height=1, subject=n.to_bytes(32, "big"), fields={FIELDS!r})
    print(n, r.id.hex(), flush=True)
    n += 1
"""


def next_id(prev: bytes | None, n: int) -> bytes:
    """The id the child's receipt ``n`` has when chained after ``prev`` (signatures are deterministic)."""
    return ReceiptIssuer(Identity.from_label(LABEL), prev_id=prev).issue(
        "api.call", height=1, subject=n.to_bytes(32, "big"), fields=FIELDS).id


def test_sigkill_while_issuing_never_reuses_a_prev(tmp_path: Path) -> None:
    database = tmp_path / "node.duckdb"
    rng = random.Random(1604)
    head: bytes | None = None
    start = 0
    seen: set[bytes] = set()  # every prev a returned receipt used
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for _ in range(5):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(database), str(start)], stdout=subprocess.PIPE,
                                 text=True, env=env)
        assert child.stdout is not None
        first = child.stdout.readline().split()
        assert first[0] == "head" and first[1] == (head.hex() if head else "-")  # the restart continues the chain
        returned: list[tuple[int, bytes]] = []
        for _ in range(rng.randint(3, 120)):
            number, hex_id = child.stdout.readline().split()
            returned.append((int(number), bytes.fromhex(hex_id)))
        child.send_signal(signal.SIGKILL)
        child.wait()
        # Lines printed after those read: receipts returned before the kill.
        for line in child.stdout.read().splitlines():
            number, hex_id = line.split()
            returned.append((int(number), bytes.fromhex(hex_id)))
        prev = head
        for n, rid in returned:  # each returned receipt chains to the one before, none reuses a prev
            assert rid == next_id(prev, n) and prev not in seen
            seen.add(prev)  # type: ignore[arg-type]
            prev = rid
        last_n = returned[-1][0]
        # The file holds the last returned receipt, or the next one if the kill came between its fsync and its print.
        after = NodeIssuer(duckdb.connect(str(database), read_only=True), Identity.from_label(LABEL)).prev_id
        if after == prev:
            start = last_n + 1
        else:
            assert after == next_id(prev, last_n + 1), "the head is neither the last receipt returned nor the next"
            seen.add(prev)  # type: ignore[arg-type]
            start = last_n + 2
        head = after
    assert len((tmp_path / ISSUER_FILENAME).read_bytes()) == FILE_SIZE


def test_a_daemon_with_a_damaged_issuer_state_stops_at_start_with_exit_code_5(tmp_path: Path) -> None:
    cfg, _ = single_validator(tmp_path, period_ms=500)
    data_dir = tmp_path / "data-v"
    data_dir.mkdir()
    (data_dir / ISSUER_FILENAME).write_bytes(b"\x07" * FILE_SIZE)
    done = run_cli("daemon", "start", "--config", str(cfg), timeout=60)
    assert done.returncode == EXIT_DATA_DIR, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert str(data_dir / ISSUER_FILENAME) in line and "corrupt" in line
