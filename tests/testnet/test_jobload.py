"""Analytics jobs as testnet load (node/testnet/jobload.py): the manifest's
job_rate, and the check failing for real when jobs do not become final or
receipts do not verify against the genesis given. A real loopback run with a
kill where every job is verified and every receipt verifies offline is the
ci-short manifest (tests/testnet/test_run.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from node.base.errors import ConfigError
from node.base.keys import Identity
from node.consensus.genesis import Genesis
from node.testnet import layout
from node.testnet.jobload import AnalyticsWorkload, percentile, tenant_dataset
from node.testnet.manifest import parse_manifest
from tests.support import DaemonProcess, free_port, node_addr, run_cli, write_node_config


# -- the manifest ---------------------------------------------------------------------
def test_job_rate_parses_and_defaults_to_no_jobs():
    assert parse_manifest({"load": {"job_rate": 0.5}}).load.job_rate == 0.5
    assert parse_manifest({"load": {"job_rate": 2}}).load.job_rate == 2.0
    assert parse_manifest({"load": {"tx_rate": 1.0}}).load.job_rate == 0.0


@pytest.mark.parametrize("value, message", [
    (-0.1, "job_rate: expected 0..20 jobs per second, got -0.1"),
    (21, "job_rate: expected 0..20 jobs per second, got 21"),
    (float("nan"), "job_rate: expected 0..20"),
    ("fast", "job_rate: expected a number, got str 'fast'"),
    (True, "job_rate: expected a number, got bool True"),
])
def test_bad_job_rate_is_a_config_error_naming_the_key(value, message):
    with pytest.raises(ConfigError) as caught:
        parse_manifest({"load": {"job_rate": value}}, "m.toml")
    assert str(caught.value).startswith("m.toml: [load] ") and message in str(caught.value)


def test_bad_job_rate_from_the_cli_is_a_usage_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[load]\njob_rate = -1\n")
    done = run_cli("testnet", "validate", str(bad))
    assert done.returncode == 2 and "[load] job_rate" in done.stderr and "Traceback" not in done.stderr
    good = tmp_path / "good.toml"
    good.write_text("[load]\ntx_rate = 1\njob_rate = 0.25\nduration_s = 10\n")
    done = run_cli("testnet", "validate", str(good))
    assert done.returncode == 0 and "0.25 jobs/s" in done.stdout, done.stdout + done.stderr


def test_tenants_datasets_and_percentiles_are_deterministic():
    a, b = AnalyticsWorkload(genesis=Path(layout.GENESIS), job_rate=0.5), AnalyticsWorkload(genesis=Path(layout.GENESIS), job_rate=0.5)
    assert [t.identity.peer_id for t in a.tenants] == [t.identity.peer_id for t in b.tenants] and len(a.tenants) == 2
    assert len(AnalyticsWorkload(genesis=Path(layout.GENESIS), job_rate=3.0).tenants) == 6
    assert tenant_dataset(0) == tenant_dataset(0) != tenant_dataset(1)
    assert tenant_dataset(0).startswith(b"day,product,units\n2026-01-01,apples,")
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0 and percentile([1.0, 2.0, 3.0, 4.0], 95) == 4.0


# -- the check finds real problems -------------------------------------------------------
@pytest.mark.timeout(300)
async def test_check_reports_jobs_that_never_become_final_and_receipts_of_another_chain(node_dir):
    identity = Identity.from_label("test-node-solo")
    genesis = node_dir / "genesis.toml"
    Genesis(chain_id="jobload-check", genesis_time_ms=time.time_ns() // 1_000_000 - 1000, validators=(identity.public_key,),
            block_period_ms=200, round_timeout_base_ms=1000, round_timeout_cap_ms=4000).write(genesis)
    other = node_dir / "other-genesis.toml"
    Genesis(chain_id="jobload-check", genesis_time_ms=time.time_ns() // 1_000_000 - 1000,
            validators=(Identity.from_label("someone else").public_key,)).write(other)
    port = free_port()
    cfg = write_node_config(node_dir, "solo", port=port, roles=["validator", "scheduler", "gateway", "processing", "storage"],
                            genesis=genesis, service_policy=None)
    cfg.write_text(cfg.read_text() + "\n[services]\nstorage_replicas = 1\n")
    # A real daemon process: its consensus never waits for this test's client work.
    with DaemonProcess(cfg):
        # The first address has nobody listening: submissions must move on, never count twice.
        addresses = [node_addr(free_port(), "ghost"), node_addr(port, "solo")]
        # One processing node and replication 2: no job can ever be scheduled.
        work = AnalyticsWorkload(genesis=genesis, job_rate=0.6, label="jobload-check", replication=2,
                                 final_timeout_s=6, receipt_timeout_s=90)
        with trio.move_on_after(150):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(work.run, addresses, trio.current_time() + 150)
                while len(work.jobs) < 4:
                    await trio.sleep(0.1)
                nursery.cancel_scope.cancel()  # mid-submission, maybe: a job whose fate is unknown
        jobs = work.jobs
        assert len(jobs) >= 4 and len({j.job_id for j in jobs}) == len(jobs), [t.last_error for t in work.tenants]
        assert work.unreachable_attempts > 0
        # Re-sent until committed (a job cancelled mid-submission is re-sent as the same transaction).
        await work.settle(addresses, trio.current_time() + 120)
        await work.refresh(addresses)
        assert all(j.summary is not None for j in jobs), [t.last_error for t in work.tenants]
        problems = await work.check(addresses)
        assert len(problems) == len(jobs), problems
        assert all("not final after 6 s: submitted (" in p for p in problems), problems
        assert work.state_counts() == {"verified": 0, "disputed": 0, "failed": 0, "cancelled": 0, "submitted": len(jobs)}
        assert work.receipts_verified >= len(jobs)  # each job's api.call receipt, against the right genesis
        assert f"{len(jobs)} submitted" in work.summary() and f"{len(jobs)} submitted (" in work.summary()

        # The same jobs checked against another chain's genesis: no receipt verifies.
        work.genesis, work.receipts_verified = other, 0
        problems = await work.check(addresses)
        assert any("does not verify offline" in p for p in problems), problems
        assert work.receipts_verified == 0
