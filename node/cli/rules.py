"""``metanode rules``: changes of the chain rules by the validators' vote.

``propose NAME=VALUE [--from-height H]`` signs a ``gov.propose`` of kind
``set_rule`` with a validator's key and waits until it is committed (the
proposal id is the transaction's hash); ``vote`` signs a ``gov.vote``. A
proposal executes once more than two thirds of the current validators voted
for it, and the rule changes from ``max(H, executed height + 2)``
(node/app/rule_changes.py). ``list`` prints ``gov_rules``: the rules in force
at the next block, the ``set_rule`` proposals with their votes, and every
executed change with its heights. The name and the range are checked here
first (a usage error, exit 2), against the same table the chain uses
(node/consensus/genesis_rules.py ``RULES``); whether the value is new and keeps
the rules consistent is the chain state's answer. Like every networked
command, this one never imports libp2p; it shares the signing and calling
helpers of ``metanode members``.
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
    submit_gov_tx,
    vote_for,
)


def parse_rule_setting(text: str) -> tuple[str, int]:
    """``NAME=VALUE`` as (a chain rule's name, an integer in its range); UserError (usage) otherwise."""
    from node.consensus.genesis_rules import RULES

    name, sep, value_text = text.partition("=")
    name, value_text = name.strip(), value_text.strip()
    if not sep or not name:
        raise UserError(f"NAME=VALUE: expected a rule and its value, e.g. max_attempts=5, got {text[:80]!r}",
                        exit_code=EXIT_USAGE)
    rule = RULES.get(name)
    if rule is None:
        raise UserError(f"NAME=VALUE: unknown rule {name[:80]!r}; expected one of {', '.join(RULES)}",
                        exit_code=EXIT_USAGE)
    try:
        value = int(value_text, 10)
    except ValueError:
        raise UserError(f"NAME=VALUE: {name} needs an integer value, got {value_text[:80]!r}",
                        exit_code=EXIT_USAGE) from None
    if not rule.low <= value <= rule.high:
        raise UserError(f"NAME=VALUE: {name} must be in {rule.low}..{rule.high}, got {value}", exit_code=EXIT_USAGE)
    return name, value


@click.group()
def rules() -> None:
    """The chain rules: propose a change from a height, vote, list (more than 2/3 of the validators executes)."""


@rules.command("propose")
@click.argument("setting", metavar="NAME=VALUE")
@click.option("--from-height", "from_height", type=click.IntRange(min=0, max=2**63 - 1), default=None,
              help="The first block the new value applies to (default and minimum: 2 blocks after the vote executes).")
@NODE_OPTION
@KEY_OPTION
@JSON_OPTION
def propose(setting: str, from_height: int | None, node_addr: str, key_path: str, as_json: bool) -> None:
    """Propose setting one chain rule (your vote counts); print the proposal id."""
    name, value = parse_rule_setting(setting)
    action: dict[str, Any] = {"kind": "set_rule", "name": name, "value": value}
    if from_height is not None:
        action["from_height"] = from_height
    answer = submit_gov_tx(node_addr, key_path, "gov.propose", {"action": action})
    if as_json:
        echo_json({"proposal_id": answer["hash"], "height": answer["height"], "action": "set_rule",
                   "name": name, "value": value, "from_height": from_height})
    else:
        click.echo(answer["hash"])


@rules.command("vote")
@click.argument("proposal_id")
@NODE_OPTION
@KEY_OPTION
@JSON_OPTION
def vote(proposal_id: str, node_addr: str, key_path: str, as_json: bool) -> None:
    """Vote for the pending rule proposal PROPOSAL_ID (64 hex)."""
    vote_for(proposal_id, node_addr, key_path, as_json)


@rules.command("list")
@NODE_OPTION
@JSON_OPTION
def list_rules(node_addr: str, as_json: bool) -> None:
    """The rules in force at the next block, the proposals with their votes, and each past change with its heights."""
    view = call_node_method(node_addr, "gov_rules")
    if not isinstance(view, dict) or "changes" not in view:
        raise UserError(f"{node_addr} answers gov_rules in an unknown format: upgrade the node or this CLI")
    if as_json:
        echo_json(view)
        return
    for line in describe(view):
        click.echo(line)


def _setting(action: dict[str, Any]) -> str:
    when = f" from height {action['from_height']}" if "from_height" in action else ""
    return f"{action.get('name')} = {action.get('value')}{when}"


def describe(view: dict[str, Any]) -> list[str]:
    """The human form of a ``gov_rules`` answer, one line per item."""
    needed, height = view["votes_needed"], view["height"]
    lines = [f"rules of block {height} (a proposal executes with {needed} validator votes):"]
    width = max((len(name) for name in view["rules"]), default=0)
    for name, value in view["rules"].items():
        bounds = view["ranges"].get(name, {})
        lines.append(f"  {name.ljust(width)}  {value}  (genesis {view['genesis'].get(name)}, "
                     f"range {bounds.get('low')}..{bounds.get('high')})")
    pending = [p for p in view["proposals"] if p["status"] == "pending"]
    closed = [p for p in view["proposals"] if p["status"] != "pending"]
    lines.append(f"pending proposals ({len(pending)}):")
    for p in pending:
        voters = ", ".join(v["peer_id"] for v in p["votes"])
        lines.append(f"  {p['id']}  {_setting(p['action'])}  votes {p['votes_counted']} of {needed} needed "
                     f"({voters}); expires at height {p['expires_height']}")
    if closed:
        lines.append(f"closed proposals ({len(closed)}):")
        lines += [f"  {p['id']}  {_setting(p['action'])}  {p['status']} at height {p['closed_height']}" for p in closed]
    lines.append(f"changes ({len(view['changes'])}):")
    for change in view["changes"]:
        when = "in force" if change["from_height"] <= height else "takes effect"
        lines.append(f"  {change['name']} {change['previous']} -> {change['value']}: executed at height "
                     f"{change['executed_height']}, {when} from height {change['from_height']} "
                     f"(proposal {change['proposal_id']})")
    return lines
