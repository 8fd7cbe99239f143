"""`metanode rules`: usage errors in one line (CLI in a subprocess), the human form of a real
state's answer, and propose / list --json against a real single-validator node."""

from __future__ import annotations

import json
import time

import pytest
import trio

from node.base.keys import Identity
from node.cli.rules import describe
from node.consensus.genesis import Genesis
from node.consensus.genesis_rules import RULES
from tests.services.test_state_rule_changes import GOV, V, carried, set_rule
from tests.services.test_state_support import Chain
from tests.support import run_cli, running_daemon, write_node_config

NODE = "/ip4/127.0.0.1/tcp/9/p2p/" + Identity.from_label("rules-cli-nobody").peer_id  # never dialled


@pytest.mark.parametrize(("args", "message"), [
    (("propose", "max_attempts"), "NAME=VALUE: expected a rule and its value, e.g. max_attempts=5, got 'max_attempts'"),
    (("propose", "=5"), "NAME=VALUE: expected a rule and its value, e.g. max_attempts=5, got '=5'"),
    (("propose", "max_speed=5"), f"NAME=VALUE: unknown rule 'max_speed'; expected one of {', '.join(RULES)}"),
    (("propose", "max_attempts=five"), "NAME=VALUE: max_attempts needs an integer value, got 'five'"),
    (("propose", "max_attempts=0"), "NAME=VALUE: max_attempts must be in 1..100, got 0"),
    (("propose", "max_replication=9"), "NAME=VALUE: max_replication must be in 1..8, got 9"),
    (("vote", "abc"), "PROPOSAL_ID: expected 64 hex characters, got 'abc'"),
])
def test_usage_errors_are_one_line_with_exit_2(args, message):
    done = run_cli("rules", *args, "--node", NODE, "--key", "k.key")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"error: {message}"
    assert done.stdout == ""


def test_a_negative_from_height_is_a_usage_error():
    done = run_cli("rules", "propose", "max_attempts=5", "--from-height", "-1", "--node", NODE, "--key", "k.key")
    assert done.returncode == 2 and "--from-height" in done.stderr and "Traceback" not in done.stderr


def test_the_human_list_shows_rules_pending_votes_and_each_change_with_its_heights():
    chain = Chain(governance=GOV)
    done = set_rule(chain, V[0], "max_attempts", 5)
    chain.block(*carried(chain, done))  # block 1: in force from 3
    waiting = set_rule(chain, V[3], "max_inputs", 8, from_height=100)
    chain.block(waiting)
    lines = describe(chain.machine.rules_view())
    assert lines[0] == "rules of block 3 (a proposal executes with 3 validator votes):"
    assert lines[2] == "  max_attempts          5  (genesis 3, range 1..100)"  # padded to min_service_interval
    assert lines[1 + len(RULES)] == "pending proposals (1):"
    assert lines[2 + len(RULES)] == (f"  {waiting.hash.hex()}  max_inputs = 8 from height 100  votes 1 of 3 needed "
                                     f"({V[3].peer_id}); expires at height 1002")
    assert lines[3 + len(RULES):] == [
        "closed proposals (1):", f"  {done.hash.hex()}  max_attempts = 5  executed at height 1",
        "changes (1):", f"  max_attempts 3 -> 5: executed at height 1, in force from height 3 (proposal {done.hash.hex()})"]


async def test_rules_propose_and_list_json_against_a_node(node_dir):
    validator = Identity.from_label("test-node-v")
    genesis = Genesis(chain_id="rules-test", genesis_time_ms=time.time_ns() // 1_000_000 - 1000,
                      validators=(validator.public_key,), block_period_ms=100, round_timeout_base_ms=1000,
                      round_timeout_cap_ms=4000, rules={"max_attempts": 4})
    path = node_dir / "genesis.toml"
    genesis.write(path)
    cfg = write_node_config(node_dir, "v", roles=["validator"], genesis=path)
    key = str(node_dir / "v.key")
    async with running_daemon(cfg) as daemon:
        addr = daemon.listen_addrs()[0]

        def cli(*args: str):
            return trio.to_thread.run_sync(lambda: run_cli("rules", *args, "--node", addr, timeout=120))

        before = await cli("list", "--json")
        assert before.returncode == 0, before.stderr[-2000:]
        view = json.loads(before.stdout)
        assert set(view) == {"height", "rules", "genesis", "ranges", "votes_needed", "proposals", "changes"}
        assert view["rules"]["max_attempts"] == view["genesis"]["max_attempts"] == 4
        assert view["votes_needed"] == 1 and view["proposals"] == [] and view["changes"] == []

        # The genesis value: committed but refused by the state, exit 1 with its reason.
        same = await cli("propose", "max_attempts=4", "--key", key)
        assert same.returncode == 1, same.stderr[-2000:]
        assert "action.value: max_attempts is already 4 at height" in same.stderr

        proposed = await cli("propose", "max_attempts=6", "--key", key, "--json")
        assert proposed.returncode == 0, proposed.stderr[-2000:]
        answer = json.loads(proposed.stdout)
        assert answer == {"proposal_id": answer["proposal_id"], "height": answer["height"], "action": "set_rule",
                          "name": "max_attempts", "value": 6, "from_height": None}
        executed = answer["height"]

        later = await cli("propose", "exclusion_blocks=9", "--from-height", str(executed + 1000), "--key", key, "--json")
        assert later.returncode == 0, later.stderr[-2000:]
        assert json.loads(later.stdout)["from_height"] == executed + 1000

        after = json.loads((await cli("list", "--json")).stdout)
        assert [p["status"] for p in after["proposals"]] == ["executed", "executed"]  # one validator: executed at once
        first = after["changes"][0]
        assert first == {"from_height": executed + 2, "name": "max_attempts", "value": 6, "previous": 4,
                         "executed_height": executed, "proposal_id": answer["proposal_id"]}
        assert after["changes"][1]["from_height"] == executed + 1000
        if after["height"] >= executed + 2:
            assert after["rules"]["max_attempts"] == 6
        human = await cli("list")
        assert human.returncode == 0 and f"max_attempts 4 -> 6: executed at height {executed}" in human.stdout
        members = await trio.to_thread.run_sync(lambda: run_cli("members", "list", "--node", addr, timeout=120))
        assert f"{answer['proposal_id']}  set_rule max_attempts=6  executed at {executed}" in members.stdout
