"""``metanode rpc``: call any JSON-RPC method of a node over p2p."""

from __future__ import annotations

import json
import logging
import sys

import click
import trio

from node.base.errors import EXIT_RUNTIME, UnreachableError, UserError


@click.command()
@click.argument("method")
@click.argument("params", required=False)
@click.option("--node", "node_addr", required=True, envvar="METANODE_NODE", help="Node multiaddr: /ip4/HOST/tcp/PORT/p2p/PEER_ID (or $METANODE_NODE).")
@click.option("--timeout", default=30.0, show_default=True, help="Deadline of the call, seconds.")
def rpc(method: str, params: str | None, node_addr: str, timeout: float) -> None:
    """Call METHOD with PARAMS (a JSON array or object) and print the result as JSON."""
    parsed = None
    if params is not None:
        try:
            parsed = json.loads(params)
        except json.JSONDecodeError as exc:
            raise UserError(f"PARAMS is not valid JSON: {exc}", exit_code=2) from None
        if not isinstance(parsed, (list, dict)):
            raise UserError("PARAMS must be a JSON array or object", exit_code=2)
    from node.p2p.client import call_node
    from node.p2p.rpc_client import RpcCallError

    # Errors are reported once, as one line, below. The light dialer logs
    # nothing, so structlog (a tenth of a second to import) is not set up here.
    logging.getLogger().setLevel(logging.ERROR)

    try:
        result = trio.run(lambda: call_node(node_addr, method, parsed, timeout=timeout))
    except RpcCallError as exc:
        click.echo(json.dumps({"code": exc.code, "message": exc.message, "data": exc.data}), err=True)
        sys.exit(EXIT_RUNTIME)
    except (ConnectionError, trio.TooSlowError) as exc:
        raise UnreachableError(f"lost {node_addr}: {exc or 'timed out'}") from None
    click.echo(json.dumps(result, indent=2, sort_keys=True))
