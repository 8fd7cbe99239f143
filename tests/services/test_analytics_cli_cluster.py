"""``metanode analytics`` against a real node, as the planning document writes it:
``submit --type trend-analysis --data sales.csv --follow`` with the bundled
sample and no parameters ends verified and says what it inferred; the same
file again is "already stored"; every command that prints data has ``--json``;
a file with bad rows is refused listing line numbers; on a pipe there is no
progress bar, and on a terminal there is one.

One confined all-roles node (validator, scheduler, gateway, storage,
processing) serves the module: a job's replication is 1 here.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import time
from pathlib import Path

import pytest

from node.base.keys import Identity
from node.consensus.genesis import Genesis
from tests.support import METANODE, DaemonProcess, free_port, run_cli, wait_until, write_node_config

pytestmark = pytest.mark.timeout(600)
SAMPLE = Path(__file__).resolve().parents[2] / "node" / "data" / "sales.csv"
TENANT = Identity.from_label("analytics-cli-cluster-tenant")
HEX64 = re.compile(r"^[0-9a-f]{64}$")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """(node address, tenant key path, a directory for the test's files)."""
    directory = tmp_path_factory.mktemp("analytics-cli-node")
    identity = Identity.from_label("analytics-cli-cluster-node")
    genesis = directory / "genesis.toml"
    Genesis(chain_id="analytics-cli-cluster", genesis_time_ms=time.time_ns() // 1_000_000 - 1000,
            validators=(identity.public_key,), block_period_ms=200, round_timeout_base_ms=1000,
            round_timeout_cap_ms=4000).write(genesis)
    port = free_port()
    config = write_node_config(directory, "node", port=port, identity=identity, genesis=genesis, service_policy=None,
                               roles=["validator", "scheduler", "gateway", "processing", "storage"],
                               extra="\n[services]\nstorage_replicas = 1\n")
    key = directory / "tenant.key"
    TENANT.write(key)
    node = f"/ip4/127.0.0.1/tcp/{port}/p2p/{identity.peer_id}"
    with DaemonProcess(config) as proc:
        def processing_ready() -> bool:
            assert proc.proc.poll() is None, proc.log()[-4000:]
            done = run_cli("analytics", "health", "--node", node, "--key", str(key), "--json")
            return done.returncode == 0 and json.loads(done.stdout)["processing_nodes"] >= 1

        wait_until(processing_ready, 180, interval=1, what="the node registered for processing")
        yield node, key, directory


def cli(cluster, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    node, key, _ = cluster
    return run_cli("analytics", *args, "--node", node, "--key", str(key), timeout=timeout)


def test_trend_analysis_of_the_sample_with_no_params_ends_verified(cluster):
    done = cli(cluster, "submit", "--type", "trend-analysis", "--data", str(SAMPLE), "--follow")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "\x1b" not in done.stderr  # plain text on a pipe
    assert re.search(r"^job [0-9a-f]{64}: verified", done.stdout, re.M), done.stdout
    assert re.search(r"\(\d+ rows?\)", done.stdout)  # the result table
    err = done.stderr
    # What was stored, and the inferred schema (column, type).
    assert re.search(r"^sales\.csv -> sales@\d+: 2,920 rows, 4 columns, 70,866 bytes, digest [0-9a-f]{16}…$", err, re.M), err
    assert "  day DATE · product VARCHAR · units BIGINT · price_cents BIGINT" in err
    # What trend-analysis inferred, and the --param that changes it.
    assert re.search(r"^trend-analysis: time_column=day: .*--param time_column=", err, re.M), err
    assert re.search(r"^trend-analysis: value_column=units: .*--param value_column=", err, re.M), err
    # The follow lines: elapsed time and what is awaited, one line per change (never per tick).
    follow = [line for line in err.splitlines() if re.match(r"^(submitted|scheduled|running|verified) \d+\.\d s · ", line)]
    assert follow and follow[-1].startswith("verified ") and follow[-1].endswith("1/1 results agree"), err
    assert len(follow) == len({line.split(" · ", 1)[1] for line in follow}) or len(follow) < 8, follow
    # No upload progress on a pipe: no bar, no line per chunk.
    assert "uploading" not in err and "bytes/s" not in err and "B/s" not in err


def test_the_same_file_again_is_already_there_and_trend_analysis_is_spelled_either_way(cluster):
    _, _, directory = cluster
    copy = directory / "again.csv"
    copy.write_bytes(SAMPLE.read_bytes())
    for _ in range(2):
        done = cli(cluster, "submit", "--type", "trend_analysis", "--data", str(copy), "--param", "window=7d")
        assert done.returncode == 0, done.stderr
        job_id = done.stdout.strip()
        assert HEX64.match(job_id), done.stdout  # the answer on stdout is the job id alone
        assert f"metanode analytics status --job-id {job_id} --follow" in done.stderr
    assert re.search(r"^again\.csv: already stored as again@1: 2,920 rows", done.stderr, re.M), done.stderr
    followed = cli(cluster, "status", "--job-id", job_id, "--follow", "--json")
    assert followed.returncode == 0, followed.stderr
    status = json.loads(followed.stdout)
    assert status["state"] == "verified" and status["params"]["window"] == "7d"
    assert status["params"]["time_column"] == "day" and status["params"]["value_column"] == "units"
    assert followed.stderr == ""  # --json: nothing on stderr
    shown = cli(cluster, "status", "--job-id", job_id)
    assert shown.returncode == 0 and f"job {job_id}: verified · 1/1 results agree" in shown.stdout, shown.stdout


def test_every_listing_has_json_and_a_header(cluster):
    cli(cluster, "submit", "--type", "summary", "--data", f"sales={SAMPLE}", "--follow", "--quiet")
    for command in ("list", "health", "datasets"):
        done = cli(cluster, command, "--json")
        assert done.returncode == 0, (command, done.stderr)
        json.loads(done.stdout)
    jobs = json.loads(cli(cluster, "list", "--json").stdout)
    assert jobs and all(HEX64.match(j["id"]) for j in jobs)
    listed = cli(cluster, "list")
    header = listed.stdout.splitlines()[0].split()
    assert header[:4] == ["JOB", "ID", "TYPE", "STATE"], listed.stdout
    assert jobs[0]["id"] in listed.stdout
    datasets = json.loads(cli(cluster, "datasets", "--json").stdout)
    sales = [d for d in datasets if d["name"] == "sales"]
    assert sales and sales[-1]["row_count"] == 2920 and len(sales[-1]["columns"]) == 4 and sales[-1]["latest"], sales
    table = cli(cluster, "datasets").stdout.splitlines()
    assert table[0].split() == ["NAME", "VERSION", "ROWS", "COLUMNS", "BYTES", "DIGEST"], table
    assert any(line.split()[:6] == ["sales", str(sales[-1]["version"]), "(latest)", "2,920", "4", "70,866"] for line in table), table
    health = cli(cluster, "health").stdout
    assert "processing nodes" in health and "1 healthy of 1" in health


def test_a_csv_with_bad_rows_is_refused_listing_line_numbers(cluster):
    _, _, directory = cluster
    bad = directory / "bad_rows.csv"
    bad.write_text("day,product,units\n2026-01-01,apples,3\n2026-01-02,pears,lots\n2026-01-03,plums\n2026-01-04,figs,2\n")
    done = cli(cluster, "submit", "--type", "summary", "--data", str(bad))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert "bad_rows.csv: 2 bad rows; nothing was stored" in done.stderr, done.stderr
    assert re.search(r"^  line 3: ", done.stderr, re.M) and re.search(r"^  line 4: ", done.stderr, re.M), done.stderr
    skipped = cli(cluster, "submit", "--type", "summary", "--data", str(bad), "--on-bad-rows", "skip", "--follow")
    assert skipped.returncode == 0, skipped.stderr
    assert "2 rows" in skipped.stderr and "2 bad rows skipped" in skipped.stderr, skipped.stderr


def test_an_ambiguous_file_is_an_error_listing_the_candidates(cluster):
    _, _, directory = cluster
    two_dates = directory / "two_dates.csv"
    two_dates.write_text("ordered,shipped,units\n2026-01-01,2026-01-03,3\n2026-01-02,2026-01-04,5\n")
    done = cli(cluster, "submit", "--type", "trend-analysis", "--data", str(two_dates))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "ordered" in done.stderr and "shipped" in done.stderr and "--param time_column=" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_an_upload_on_a_terminal_shows_one_progress_bar(cluster):
    """stderr on a pseudo-terminal: rich's bar with bytes, rate and time left, drawn in place."""
    node, key, directory = cluster
    data = directory / "terminal_upload.csv"
    data.write_text("day,product,units\n" + "".join(f"2026-01-{1 + i % 28:02d},p{i % 7},{i}\n" for i in range(200_000)))
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([*METANODE, "analytics", "submit", "--node", node, "--key", str(key), "--type", "summary",
                             "--data", str(data)], stdout=subprocess.PIPE, stderr=secondary, text=True,
                            env={**os.environ, "COLUMNS": "160", "TERM": "xterm"})
    os.close(secondary)
    seen = b""
    while True:
        ready, _, _ = select.select([primary], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the child closed its end
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    out, _ = proc.communicate(timeout=240)
    os.close(primary)
    assert proc.returncode == 0, seen.decode(errors="replace")
    text = seen.decode(errors="replace")
    assert "uploading terminal_upload.csv" in text and "/s" in text, text
    assert text.count("uploading terminal_upload.csv") >= 1 and "terminal_upload.csv -> terminal_upload@1" in text
    assert HEX64.match(out.strip())


def test_a_waiting_job_says_why_and_cancel_answers_json(cluster):
    done = cli(cluster, "submit", "--type", "summary", "--data", f"sales={SAMPLE}", "--replication", "2", "--json")
    assert done.returncode == 0, done.stderr
    submitted = json.loads(done.stdout)
    job_id = submitted["job_id"]
    assert submitted["params"] == {"input": "sales"} and list(submitted["inputs"]) == ["sales"]

    def waiting():
        shown = cli(cluster, "status", "--job-id", job_id)
        return shown.stdout if shown.returncode == 0 else None

    line = wait_until(waiting, 60, interval=1, what="the job on chain")
    # One processing node, two wanted: the status says what the job waits for.
    assert f"job {job_id}: submitted · waiting to be scheduled: " in line, line
    cancelled = cli(cluster, "cancel", "--job-id", job_id, "--follow", "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["state"] == "cancelled" and cancelled.stderr == ""
    again = cli(cluster, "cancel", "--job-id", job_id, "--json")
    assert again.returncode == 1 and f"job {job_id} is already cancelled" in again.stderr
