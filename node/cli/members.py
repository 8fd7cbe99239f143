"""``metanode members``: admission of nodes and tenants by the consortium's validators.

``propose`` and ``vote`` sign a ``gov.propose`` / ``gov.vote`` transaction
with a validator's key and wait until it is committed (the proposal id is the
propose transaction's hash); ``list`` prints ``gov_proposals``: the
policies, the admitted nodes and tenants, and the proposals with their votes.
Keys are 64-hex public keys or peer ids. Like every networked command, this
one never imports libp2p (node/p2p/client.py dials with the light dialer).
``metanode validators`` (node/cli/validators.py) shares the helpers here.
"""

from __future__ import annotations

import json
from typing import Any

import click

from node.base.errors import EXIT_USAGE, UserError

COMMIT_TIMEOUT_S = 60.0

NODE_OPTION = click.option("--node", "node_addr", required=True, envvar="METANODE_NODE",
                           help="Node multiaddr: /ip4/HOST/tcp/PORT/p2p/PEER_ID (or $METANODE_NODE).")
KEY_OPTION = click.option("--key", "key_path", required=True, envvar="METANODE_KEY",
                          help="The validator's key file (or $METANODE_KEY).")
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")

_ACTIONS = {
    "admit_node": "--admit-node",
    "remove_node": "--remove-node",
    "admit_tenant": "--admit-tenant",
    "remove_tenant": "--remove-tenant",
}


def parse_member_key(text: str, option: str) -> bytes:
    """A public key from 64 hex characters or a peer id; UserError (usage) otherwise."""
    text = text.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    from node.base.keys import public_key_from_peer_id

    try:
        return public_key_from_peer_id(text)
    except ValueError:
        raise UserError(f"{option}: {text[:80]!r} is neither a 64-hex public key nor a peer id",
                        exit_code=EXIT_USAGE) from None


def parse_proposal_id(text: str) -> bytes:
    """A proposal id (64 hex characters); UserError (usage) otherwise."""
    try:
        proposal = bytes.fromhex(text)
    except ValueError:
        proposal = b""
    if len(proposal) != 32:
        raise UserError(f"PROPOSAL_ID: expected 64 hex characters, got {text[:80]!r}", exit_code=EXIT_USAGE)
    return proposal


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


def submit_gov_tx(node_addr: str, key_path: str, tx_type: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Sign ``tx_type`` with the validator's key, submit it, wait for the commit.

    The connection uses a fresh identity (the validator's key may be the very
    node's key being dialled); only the transaction carries the validator's
    signature. A transaction the state refused is reported as an error."""
    import logging

    import trio

    from node.base.errors import UnreachableError, sole_exception
    from node.consensus.tx import sign_tx
    from node.p2p.client import connect_to_node
    from node.p2p.rpc_client import RpcCallError
    from node.sdk.client import require_key, submit_signed

    logging.getLogger().setLevel(logging.ERROR)
    identity = require_key(key_path)

    async def main() -> Any:
        async with connect_to_node(node_addr) as rpc:
            chain_id = (await rpc.call("chain_head"))["chain_id"]

            async def signed(nonce: int | None) -> bytes:
                if nonce is None:
                    nonces = await rpc.call("chain_nonce", {"sender": identity.public_key.hex()})
                    nonce = nonces.get("expected_next", nonces["pending_next"])
                return sign_tx(identity, chain_id=chain_id, nonce=nonce, tx_type=tx_type, payload=payload).encoded

            # The node may hear of our previous transaction (committed through another
            # node) between our nonce read and the submit: it then names the nonce it wants.
            return await submit_signed(rpc, "tx_submit", signed, timeout=COMMIT_TIMEOUT_S)

    try:
        answer: dict[str, Any] = trio.run(main)
    except BaseException as exc:
        inner = sole_exception(exc)
        if isinstance(inner, RpcCallError):
            raise UserError(f"{inner.message} ({inner.code}): {json.dumps(inner.data)}") from None
        if isinstance(inner, (ConnectionError, trio.BrokenResourceError, trio.ClosedResourceError)):
            raise UnreachableError(f"lost {node_addr}: {inner}") from None
        if isinstance(inner, trio.TooSlowError):
            raise UserError("timed out waiting for the transaction to be committed") from None
        if inner is not exc:
            raise inner from None
        raise
    if answer.get("state_rejected"):
        raise UserError(f"{tx_type} {answer['hash']} was committed but refused: {answer['state_rejected']}")
    return answer


def call_node_method(node_addr: str, method: str) -> Any:
    import logging

    import trio

    from node.base.errors import UnreachableError
    from node.p2p.client import call_node
    from node.p2p.rpc_client import RpcCallError

    logging.getLogger().setLevel(logging.ERROR)
    try:
        return trio.run(lambda: call_node(node_addr, method, None, timeout=30.0))
    except RpcCallError as exc:
        raise UserError(f"{method}: {exc.message} ({exc.code})") from None
    except (ConnectionError, trio.TooSlowError) as exc:
        raise UnreachableError(f"lost {node_addr}: {exc or 'timed out'}") from None


@click.group()
def members() -> None:
    """Admission of nodes and tenants: propose, vote, list (validators vote; more than 2/3 executes)."""


@members.command("propose")
@click.option("--admit-node", "admit_node", metavar="KEY", help="Admit a node (64-hex public key or peer id).")
@click.option("--remove-node", "remove_node", metavar="KEY", help="Remove an admitted node.")
@click.option("--admit-tenant", "admit_tenant", metavar="KEY", help="Admit a tenant.")
@click.option("--remove-tenant", "remove_tenant", metavar="KEY", help="Remove an admitted tenant.")
@NODE_OPTION
@KEY_OPTION
@JSON_OPTION
def propose(admit_node: str | None, remove_node: str | None, admit_tenant: str | None, remove_tenant: str | None,
            node_addr: str, key_path: str, as_json: bool) -> None:
    """Propose one admission change (your vote counts); print the proposal id."""
    given = {kind: value for kind, value in (("admit_node", admit_node), ("remove_node", remove_node),
                                              ("admit_tenant", admit_tenant), ("remove_tenant", remove_tenant))
             if value is not None}
    if len(given) != 1:
        raise UserError("give exactly one of " + ", ".join(_ACTIONS.values()), exit_code=EXIT_USAGE)
    (kind, text), = given.items()
    key = parse_member_key(text, _ACTIONS[kind])
    answer = submit_gov_tx(node_addr, key_path, "gov.propose", {"action": {"kind": kind, "key": key}})
    if as_json:
        echo_json({"proposal_id": answer["hash"], "height": answer["height"], "action": kind, "key": key.hex()})
    else:
        click.echo(answer["hash"])


def vote_for(proposal_id: str, node_addr: str, key_path: str, as_json: bool) -> None:
    """Sign and commit a gov.vote for PROPOSAL_ID and say so: what every
    ``vote`` command (members, validators, rules) does, whatever the action."""
    proposal = parse_proposal_id(proposal_id)
    answer = submit_gov_tx(node_addr, key_path, "gov.vote", {"proposal": proposal})
    if as_json:
        echo_json({"proposal_id": proposal.hex(), "tx": answer["hash"], "height": answer["height"]})
    else:
        click.echo(f"voted for {proposal.hex()} (tx {answer['hash']}, height {answer['height']})")


@members.command("vote")
@click.argument("proposal_id")
@NODE_OPTION
@KEY_OPTION
@JSON_OPTION
def vote(proposal_id: str, node_addr: str, key_path: str, as_json: bool) -> None:
    """Vote for the pending proposal PROPOSAL_ID (64 hex)."""
    vote_for(proposal_id, node_addr, key_path, as_json)


@members.command("list")
@NODE_OPTION
@JSON_OPTION
def list_members(node_addr: str, as_json: bool) -> None:
    """Policies, admitted nodes and tenants, and proposals with their votes."""
    view = call_node_method(node_addr, "gov_proposals")
    if as_json:
        echo_json(view)
        return
    policies = view["policies"]
    click.echo(f"policies: nodes {policies['nodes']}, tenants {policies['tenants']}; "
               f"{view['votes_needed']} of {len(view['validators'])} validator votes execute a proposal")
    for label, rows in (("admitted nodes", view["admitted"]["nodes"]), ("admitted tenants", view["admitted"]["tenants"])):
        click.echo(f"{label} ({len(rows)}):")
        for row in rows:
            click.echo(f"  {row.get('peer_id', row['key'])}")
    click.echo(f"proposals ({len(view['proposals'])}):")
    for p in view["proposals"]:
        action = p["action"]
        target = action.get("peer_id", action.get("key")) if "key" in action else f"{action.get('name')}={action.get('value')}"
        closed = f" at {p['closed_height']}" if p["closed_height"] is not None else f", expires at {p['expires_height']}"
        click.echo(f"  {p['id']}  {p['action']['kind']} {target}  {p['status']}{closed}  "
                   f"votes {p.get('votes_counted', len(p['votes']))}/{view['votes_needed']}")
