"""``metanode validators``: changes of the validator set by the validators' vote.

``propose`` (``--add`` or ``--remove`` a peer) and ``vote`` sign a
``gov.propose`` / ``gov.vote`` transaction with a validator's key and wait
until it is committed (the proposal id is the propose transaction's hash). A
proposal executes once more than two thirds of the current validators voted
for it; the changed set decides blocks from two heights after the block that
executed it (node/app/validator_sets.py). ``list`` prints ``gov_validators``:
the set of the next block, the proposals with their votes, and every past
change with its heights. Like every networked command, this one never
imports libp2p; it shares the signing and calling helpers of
``metanode members``.
"""

from __future__ import annotations

from typing import Any

import click

from node.base.errors import EXIT_USAGE, UserError
from node.cli.members import (
    JSON_OPTION,
    KEY_OPTION,
    NODE_OPTION,
    call_node_method,
    echo_json,
    parse_member_key,
    submit_gov_tx,
    vote_for,
)

_LABELS = {"add_validator": "add", "remove_validator": "remove"}


@click.group()
def validators() -> None:
    """The validator set: propose adding or removing a validator, vote, list (more than 2/3 of the validators executes)."""


@validators.command("propose")
@click.option("--add", "add", metavar="PEER_ID", help="Add a validator (peer id or 64-hex public key).")
@click.option("--remove", "remove", metavar="PEER_ID", help="Remove a validator (peer id or 64-hex public key).")
@NODE_OPTION
@KEY_OPTION
@JSON_OPTION
def propose(add: str | None, remove: str | None, node_addr: str, key_path: str, as_json: bool) -> None:
    """Propose one change of the validator set (your vote counts); print the proposal id."""
    if (add is None) == (remove is None):
        raise UserError("give exactly one of --add PEER_ID, --remove PEER_ID", exit_code=EXIT_USAGE)
    kind, option, text = ("add_validator", "--add", add) if add is not None else ("remove_validator", "--remove", remove)
    assert text is not None  # one of the two is given
    key = parse_member_key(text, option)
    answer = submit_gov_tx(node_addr, key_path, "gov.propose", {"action": {"kind": kind, "key": key}})
    if as_json:
        echo_json({"proposal_id": answer["hash"], "height": answer["height"], "action": kind, "key": key.hex()})
    else:
        click.echo(answer["hash"])


@validators.command("vote")
@click.argument("proposal_id")
@NODE_OPTION
@KEY_OPTION
@JSON_OPTION
def vote(proposal_id: str, node_addr: str, key_path: str, as_json: bool) -> None:
    """Vote for the pending validator proposal PROPOSAL_ID (64 hex)."""
    vote_for(proposal_id, node_addr, key_path, as_json)


@validators.command("list")
@NODE_OPTION
@JSON_OPTION
def list_validators(node_addr: str, as_json: bool) -> None:
    """The current validator set, the proposals with their votes, and each past change with its heights."""
    view = call_node_method(node_addr, "gov_validators")
    if not isinstance(view, dict) or "changes" not in view:
        raise UserError(f"{node_addr} answers gov_validators in an older format: upgrade the node")
    if as_json:
        echo_json(view)
        return
    for line in describe(view):
        click.echo(line)


def describe(view: dict[str, Any]) -> list[str]:
    """The human form of a ``gov_validators`` answer, one line per item."""
    current = {v["key"] for v in view["validators"]}
    needed = view["votes_needed"]
    lines = [f"validators deciding block {view['height']} ({len(current)}; "
             f"a proposal executes with {needed} of their votes):"]
    lines += [f"  {v['peer_id']}  {v['key']}" for v in view["validators"]]
    pending = [p for p in view["proposals"] if p["status"] == "pending"]
    closed = [p for p in view["proposals"] if p["status"] != "pending"]
    lines.append(f"pending proposals ({len(pending)}):")
    for p in pending:
        voters = ", ".join(v["peer_id"] + ("" if v["key"] in current else " (no longer a validator)")
                           for v in p["votes"])
        lines.append(f"  {p['id']}  {_LABELS.get(p['action']['kind'], p['action']['kind'])} "
                     f"{p['action'].get('peer_id', p['action'].get('key'))}  votes {p['votes_counted']} of {needed} "
                     f"needed ({voters}); expires at height {p['expires_height']}")
    if closed:
        lines.append(f"closed proposals ({len(closed)}):")
        lines += [f"  {p['id']}  {_LABELS.get(p['action']['kind'], p['action']['kind'])} "
                  f"{p['action'].get('peer_id', p['action'].get('key'))}  {p['status']} at height {p['closed_height']}"
                  for p in closed]
    lines.append(f"changes ({len(view['changes'])}):")
    for change in view["changes"]:
        what = [f"+{v['peer_id']}" for v in change["added"]] + [f"-{v['peer_id']}" for v in change["removed"]]
        when = "decides" if change["from_height"] <= view["height"] else "will decide"
        lines.append(f"  {' '.join(what) or 'no change'}: executed at height {change['executed_height']}, "
                     f"{when} from height {change['from_height']} (proposal {change['proposal_id']})")
    return lines
