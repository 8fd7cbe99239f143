"""`metanode members` against a real single-validator node (in-process daemon, CLI in a subprocess)."""

from __future__ import annotations

import json
import time

import trio

from node.base.keys import Identity
from node.consensus.genesis import Admission, Genesis
from tests.support import run_cli, running_daemon, write_node_config

WORKER = Identity.from_label("members-cli-worker")


async def test_members_propose_vote_and_list_json(node_dir):
    validator = Identity.from_label("test-node-v")
    genesis = Genesis(chain_id="members-test", genesis_time_ms=time.time_ns() // 1_000_000 - 1000,
                      validators=(validator.public_key,), block_period_ms=100, round_timeout_base_ms=1000,
                      round_timeout_cap_ms=4000, admission=Admission(nodes="by-vote"))
    path = node_dir / "genesis.toml"
    genesis.write(path)
    cfg = write_node_config(node_dir, "v", roles=["validator"], genesis=path)
    key = str(node_dir / "v.key")
    async with running_daemon(cfg) as daemon:
        addr = daemon.listen_addrs()[0]

        def cli(*args: str):
            return trio.to_thread.run_sync(lambda: run_cli("members", *args, "--node", addr, timeout=120))

        before = await cli("list", "--json")
        assert before.returncode == 0, before.stderr[-2000:]
        view = json.loads(before.stdout)
        assert view["policies"] == {"nodes": "by-vote", "tenants": "open"}
        assert view["admitted"]["nodes"] == [] and view["proposals"] == []
        assert [v["peer_id"] for v in view["validators"]] == [validator.peer_id]

        proposed = await cli("propose", "--admit-node", WORKER.peer_id, "--key", key, "--json")
        assert proposed.returncode == 0, proposed.stderr[-2000:]
        proposal_id = json.loads(proposed.stdout)["proposal_id"]

        after = json.loads((await cli("list", "--json")).stdout)
        assert after["admitted"]["nodes"] == [{"key": WORKER.public_key.hex(), "peer_id": WORKER.peer_id}]
        (proposal,) = after["proposals"]
        assert proposal["id"] == proposal_id and proposal["status"] == "executed"  # one validator: its vote is > 2/3
        assert [v["peer_id"] for v in proposal["votes"]] == [validator.peer_id]

        # A second vote is committed but refused by the state: exit 1 with the reason.
        again = await cli("vote", proposal_id, "--key", key)
        assert again.returncode == 1 and "is executed" in again.stderr, again.stderr[-2000:]
        usage = await cli("propose", "--admit-node", "nope", "--key", key)
        assert usage.returncode == 2 and "neither a 64-hex public key nor a peer id" in usage.stderr
