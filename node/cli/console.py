"""``metanode console``: the cluster, your jobs and their receipts in your browser.

Starts node/console/'s web server on this machine (127.0.0.1 unless told
otherwise), connected to one node with your key, prints the URL to open
(with a token, as Jupyter does) and opens it in the default browser. The key
never leaves this process; the browser gets a session cookie for the token.
Runs until interrupted (Ctrl-C).

Errors are one line: a bad key file (exit 2), a port in use (exit 2), a
genesis file of another chain (exit 2), a node that does not answer (exit 3).
"""

from __future__ import annotations

import click

from node.base.errors import UserError


@click.command()
@click.option("--node", "node_addr", required=True, envvar="METANODE_NODE",
              help="The node to talk to: /ip4/HOST/tcp/PORT/p2p/PEER_ID (or $METANODE_NODE).")
@click.option("--key", "key_path", required=True, envvar="METANODE_KEY",
              help="Your tenant key file (or $METANODE_KEY). It stays in this process.")
@click.option("--genesis", default=None, envvar="METANODE_GENESIS", type=click.Path(dir_okay=False),
              help="The genesis file you trust (or $METANODE_GENESIS): receipts are verified in the browser against it. "
                   "Without one, the receipts page cannot verify.")
@click.option("--listen", default="127.0.0.1:8765", show_default=True,
              help="HOST:PORT to serve on; port 0 picks a free one.")
@click.option("--allow-remote", is_flag=True, help="Allow a --listen address other than loopback (with a warning).")
@click.option("--no-browser", is_flag=True, help="Print the URL only; do not open a browser.")
def console(node_addr: str, key_path: str, genesis: str | None, listen: str, allow_remote: bool, no_browser: bool) -> None:
    """Serve the web console for NODE as KEY on this machine, and open it."""
    import trio

    from node.base.errors import sole_exception
    from node.base.logging import configure_client_logging
    from node.console.server import bind, check_listen_host, open_console, parse_listen
    from node.p2p.client import parse_node_addr
    from node.sdk.client import require_key

    configure_client_logging()
    identity = require_key(key_path)
    parse_node_addr(node_addr)  # exit 2 on a malformed address, before anything listens
    if genesis is not None:
        from pathlib import Path

        if not Path(genesis).is_file():
            raise UserError(f"--genesis {genesis}: no such file", exit_code=2)
    host, port = parse_listen(listen)
    warning = check_listen_host(host, allow_remote)
    if warning:
        click.echo(warning, err=True)

    async def main() -> None:
        listeners = await bind(host, port)  # a port in use is reported before the node is dialed
        async with open_console(node_addr, identity, host=host, genesis_path=genesis, listeners=listeners) as server:
            url = server.url
            click.echo(f"metanode console for {server.api.node.facts.chain_id} via {node_addr}")
            if genesis is None:
                click.echo("  no --genesis: pages work, but receipts cannot be verified in the browser", err=True)
            click.echo(f"  open: {url}")
            click.echo("  (Ctrl-C stops it)")
            if not no_browser:
                import webbrowser

                await trio.to_thread.run_sync(webbrowser.open, url)
            await trio.sleep_forever()

    try:
        trio.run(main)
    except KeyboardInterrupt:
        click.echo("console stopped", err=True)
    except BaseException as exc:
        inner = sole_exception(exc)
        if isinstance(inner, UserError) and inner is not exc:
            raise inner from None
        if isinstance(inner, KeyboardInterrupt):
            click.echo("console stopped", err=True)
            return
        raise
