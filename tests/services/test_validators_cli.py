"""`metanode validators`: usage errors in one line (CLI in a subprocess), the human form of
a real state's answer, and propose / list --json against a real single-validator node."""

from __future__ import annotations

import json
import time

import pytest
import trio

from node.base.keys import Identity
from node.cli.validators import describe
from node.consensus.genesis import Genesis
from tests.services.test_state_support import Chain
from tests.services.test_state_validator_changes import NEWCOMER, V, add, governance, remove, vote
from tests.support import run_cli, running_daemon, write_node_config

WORKER = Identity.from_label("validators-cli-worker")
NODE = "/ip4/127.0.0.1/tcp/9/p2p/" + WORKER.peer_id  # never dialled: usage errors come first


@pytest.mark.parametrize(("args", "message"), [
    (("propose", "--node", NODE, "--key", "k.key"), "give exactly one of --add PEER_ID, --remove PEER_ID"),
    (("propose", "--add", WORKER.peer_id, "--remove", WORKER.peer_id, "--node", NODE, "--key", "k.key"),
     "give exactly one of --add PEER_ID, --remove PEER_ID"),
    (("propose", "--add", "12D3KooWnope", "--node", NODE, "--key", "k.key"),
     "--add: '12D3KooWnope' is neither a 64-hex public key nor a peer id"),
    (("propose", "--remove", "zz" * 32, "--node", NODE, "--key", "k.key"),
     f"--remove: {'zz' * 32!r} is neither a 64-hex public key nor a peer id"),
    (("vote", "abc", "--node", NODE, "--key", "k.key"), "PROPOSAL_ID: expected 64 hex characters, got 'abc'"),
])
def test_usage_errors_are_one_line_with_exit_2(args, message):
    done = run_cli("validators", *args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"error: {message}"
    assert done.stdout == ""


def test_the_human_list_shows_the_set_pending_votes_and_each_change_with_its_heights():
    chain = Chain(governance=governance(*V[:4]))
    joined = add(chain, V[0], NEWCOMER)
    chain.block(joined, vote(chain, V[1], joined.hash), vote(chain, V[2], joined.hash))  # block 1: from 3
    chain.block()
    pending = remove(chain, V[3], V[0])
    chain.block(pending, vote(chain, NEWCOMER, pending.hash))  # block 3: 2 of 4 needed
    lines = describe(chain.machine.validators_view())
    assert lines[0] == "validators deciding block 4 (5; a proposal executes with 4 of their votes):"
    assert len([line for line in lines if line.startswith("  12D3KooW") and "  " in line.strip()]) == 5
    assert lines[6] == "pending proposals (1):"
    assert lines[7] == (f"  {pending.hash.hex()}  remove {V[0].peer_id}  votes 2 of 4 needed "
                        f"({V[3].peer_id}, {NEWCOMER.peer_id}); expires at height 1003")
    assert lines[8:10] == ["closed proposals (1):", f"  {joined.hash.hex()}  add {NEWCOMER.peer_id}  executed at height 1"]
    assert lines[10:] == ["changes (1):", f"  +{NEWCOMER.peer_id}: executed at height 1, decides from height 3 "
                                          f"(proposal {joined.hash.hex()})"]


async def test_validators_propose_and_list_json_against_a_node(node_dir):
    validator = Identity.from_label("test-node-v")
    genesis = Genesis(chain_id="validators-test", genesis_time_ms=time.time_ns() // 1_000_000 - 1000,
                      validators=(validator.public_key,), block_period_ms=100, round_timeout_base_ms=1000,
                      round_timeout_cap_ms=4000)
    path = node_dir / "genesis.toml"
    genesis.write(path)
    cfg = write_node_config(node_dir, "v", roles=["validator"], genesis=path)
    key = str(node_dir / "v.key")
    async with running_daemon(cfg) as daemon:
        addr = daemon.listen_addrs()[0]

        def cli(*args: str):
            return trio.to_thread.run_sync(lambda: run_cli("validators", *args, "--node", addr, timeout=120))

        before = await cli("list", "--json")
        assert before.returncode == 0, before.stderr[-2000:]
        view = json.loads(before.stdout)
        assert view["validators"] == [{"key": validator.public_key.hex(), "peer_id": validator.peer_id}]
        assert view["votes_needed"] == 1 and view["proposals"] == [] and view["changes"] == []
        assert isinstance(view["height"], int) and view["height"] >= 1

        # Removing the only validator is committed but refused by the state: exit 1 with its reason.
        last = await cli("propose", "--remove", validator.peer_id, "--key", key)
        assert last.returncode == 1, last.stderr[-2000:]
        assert f"removing {validator.peer_id} would leave no validator" in last.stderr

        proposed = await cli("propose", "--add", WORKER.peer_id, "--key", key, "--json")
        assert proposed.returncode == 0, proposed.stderr[-2000:]
        answer = json.loads(proposed.stdout)
        assert answer["action"] == "add_validator" and answer["key"] == WORKER.public_key.hex()
        proposal_id, executed = answer["proposal_id"], answer["height"]

        after = json.loads((await cli("list", "--json")).stdout)
        (proposal,) = after["proposals"]  # one validator: its own proposal executes it
        assert proposal["id"] == proposal_id and proposal["status"] == "executed"
        assert proposal["action"] == {"key": WORKER.public_key.hex(), "kind": "add_validator", "peer_id": WORKER.peer_id}
        assert after["changes"] == [{
            "from_height": executed + 2, "executed_height": executed, "proposal_id": proposal_id,
            "added": [{"key": WORKER.public_key.hex(), "peer_id": WORKER.peer_id}], "removed": []}]
        human = await cli("list")
        assert human.returncode == 0 and f"+{WORKER.peer_id}: executed at height {executed}" in human.stdout
