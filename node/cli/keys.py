"""``metanode keys``: create and inspect Ed25519 identity files."""

from __future__ import annotations

import json

import click

from node.base.errors import UserError
from node.base.keys import Identity, KeyFileError


@click.group()
def keys() -> None:
    """Create and inspect Ed25519 identity key files."""


@keys.command("init")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Key file to create (mode 0600).")
@click.option(
    "--insecure-dev-label",
    default=None,
    metavar="LABEL",
    help="Derive the key from a public LABEL instead of randomness. INSECURE: anyone can "
    "derive it. Only for the shipped example configs and local testnets.",
)
def keys_init(out: str, insecure_dev_label: str | None) -> None:
    """Create a new Ed25519 key file; refuses to overwrite an existing one."""
    identity = Identity.from_label(insecure_dev_label) if insecure_dev_label else Identity.generate()
    try:
        identity.write(out)
    except KeyFileError as exc:
        raise UserError(str(exc), exit_code=2) from None
    click.echo(f"wrote {out}\npeer id: {identity.peer_id}")


@keys.command("show")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def keys_show(path: str, as_json: bool) -> None:
    """Print the libp2p peer id and public key of a key file."""
    try:
        identity = Identity.load(path)
    except KeyFileError as exc:
        raise UserError(str(exc), exit_code=2) from None
    if as_json:
        click.echo(json.dumps({"peer_id": identity.peer_id, "public_key": identity.public_key.hex()}))
    else:
        click.echo(f"peer id:    {identity.peer_id}\npublic key: {identity.public_key.hex()}")


@keys.command("http-auth")
@click.option("--key", "key", required=True, envvar="METANODE_KEY", type=click.Path(dir_okay=False),
              help="Tenant key file that signs the request (or $METANODE_KEY).")
@click.option("--body", "body", default=None, type=click.Path(dir_okay=False), help="File sent as the request body (default: none).")
@click.argument("method")
@click.argument("path")
def keys_http_auth(key: str, body: str | None, method: str, path: str) -> None:
    """Print an Authorization header value for one HTTP gateway request.

    PATH is the request target exactly as sent, with its query
    (e.g. '/v1/datasets?name=sales&format=csv'). The value is valid for
    5 minutes and for one request only.
    """
    import hashlib

    from node.base.http_auth import sign_request

    try:
        identity = Identity.load(key)
    except KeyFileError as exc:
        raise UserError(f"--key: {exc}", exit_code=2) from None
    if not path.startswith("/"):
        raise UserError(f"PATH must start with / (the request target, e.g. /v1/jobs), got {path!r}", exit_code=2)
    digest = hashlib.sha256()
    if body is not None:
        try:
            with open(body, "rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
        except OSError as exc:
            raise UserError(f"--body: cannot read {body}: {exc.strerror or exc}", exit_code=2) from None
    click.echo(sign_request(identity, method.upper(), path, body_sha256=digest.hexdigest()))
