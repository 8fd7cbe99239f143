"""``metanode genesis``: create and inspect genesis files."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from node.base.errors import UserError


@click.group()
def genesis() -> None:
    """Create and inspect the genesis file every node of a chain shares."""


@genesis.command("init")
@click.option("--chain-id", required=True, help="Chain name: 1-64 characters of [a-z0-9._-].")
@click.option("--validator", "validators", multiple=True, required=True, metavar="KEYFILE|HEX|PEERID",
              help="A validator: its key file, its public key (64 hex) or its peer id. Repeat per validator.")
@click.option("--block-period-ms", default=1000, show_default=True, type=click.IntRange(0, 3_600_000))
@click.option("--round-timeout-base-ms", default=4000, show_default=True, type=click.IntRange(1, 3_600_000))
@click.option("--round-timeout-cap-ms", default=60000, show_default=True, type=click.IntRange(1, 86_400_000))
@click.option("--genesis-time-ms", default=None, type=int, help="Default: now.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
def init(chain_id: str, validators: tuple[str, ...], block_period_ms: int, round_timeout_base_ms: int,
         round_timeout_cap_ms: int, genesis_time_ms: int | None, out: Path) -> None:
    """Write a genesis file (refuses to overwrite one)."""
    from node.consensus.genesis import Genesis

    keys = [_public_key(v) for v in validators]
    if len(set(keys)) != len(keys):
        raise UserError("--validator: the same validator is listed twice", exit_code=2)
    g = Genesis(
        chain_id=chain_id,
        genesis_time_ms=genesis_time_ms if genesis_time_ms is not None else time.time_ns() // 1_000_000,
        validators=tuple(keys), block_period_ms=block_period_ms,
        round_timeout_base_ms=round_timeout_base_ms, round_timeout_cap_ms=round_timeout_cap_ms,
    )
    g.write(out)
    click.echo(f"wrote {out}: chain {chain_id}, {len(keys)} validators, genesis hash {g.hash.hex()}")


@genesis.command("show")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def show(path: Path, as_json: bool) -> None:
    """Validate a genesis file and print its hash and validators (compare the hash across nodes)."""
    from node.base.keys import peer_id_from_public_key
    from node.consensus.genesis import load_genesis

    g = load_genesis(path)
    info: dict[str, Any] = {
        "chain_id": g.chain_id, "hash": g.hash.hex(), "genesis_time_ms": g.genesis_time_ms,
        "block_period_ms": g.block_period_ms, "quorum": g.validator_set.quorum,
        "validators": [{"public_key": k.hex(), "peer_id": peer_id_from_public_key(k)} for k in g.validators],
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"chain {info['chain_id']}  genesis hash {info['hash']}")
    click.echo(f"{len(g.validators)} validators, quorum {info['quorum']}, block period {g.block_period_ms} ms")
    for v in info["validators"]:
        click.echo(f"  {v['peer_id']}  {v['public_key']}")


def _public_key(text: str) -> bytes:
    from node.base.keys import Identity, KeyFileError, public_key_from_peer_id

    if len(text) == 64:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    if text.startswith("12D3KooW"):
        try:
            return public_key_from_peer_id(text)
        except ValueError as exc:
            raise UserError(f"--validator {text!r}: {exc}", exit_code=2) from None
    try:
        return Identity.load(text).public_key
    except KeyFileError as exc:
        raise UserError(f"--validator {text!r}: not a public key, a peer id or a usable key file ({exc})", exit_code=2) from None
