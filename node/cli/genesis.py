"""``metanode genesis``: create and inspect genesis files.

``init`` writes every genesis setting a consortium agrees on before its chain
starts: the validators, the consensus periods, who may join (``[admission]``)
and the job rules (``[rules]``). A bad value is refused here, naming the
option that carried it, rather than by the genesis parser naming a TOML key
the user never wrote. docs/genesis.md specifies the file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from node.base.errors import UserError

_POLICIES = ("open", "allow-list", "by-vote")  # node.consensus.genesis_schema.ADMISSION_POLICIES (not imported at load time)


@click.group()
def genesis() -> None:
    """Create and inspect the genesis file every node of a chain shares."""


@genesis.command("init")
@click.option("--chain-id", required=True, help="Chain name: 1-64 characters of [a-z0-9._-].")
@click.option("--validator", "validators", multiple=True, required=True, metavar="KEYFILE|HEX|PEERID",
              help="A validator: its key file, its public key (64 hex) or its peer id. Repeat per validator.")
@click.option("--block-period-ms", default=1000, show_default=True, type=click.IntRange(0, 3_600_000),
              help="The empty-block heartbeat: at most this long between blocks when no transaction waits.")
@click.option("--min-block-interval-ms", default=None, type=click.IntRange(0, 3_600_000),
              help="The least gap between blocks: a proposer with transactions ready proposes this long after "
                   "the last block (at most --block-period-ms). Default: the block period (a fixed tick).")
@click.option("--round-timeout-base-ms", default=4000, show_default=True, type=click.IntRange(1, 3_600_000))
@click.option("--round-timeout-cap-ms", default=60000, show_default=True, type=click.IntRange(1, 86_400_000))
@click.option("--genesis-time-ms", default=None, type=int, help="Default: now.")
@click.option("--nodes-admission", type=click.Choice(_POLICIES), default="open", show_default=True,
              help="Who may register a processing, storage or gateway node: anyone (open), the keys of "
                   "--admit-node and those voted in (allow-list), or only those voted in (by-vote).")
@click.option("--tenants-admission", type=click.Choice(_POLICIES), default="open", show_default=True,
              help="Who may submit jobs and register datasets: as --nodes-admission, with --admit-tenant.")
@click.option("--admit-node", "admit_nodes", multiple=True, metavar="KEYFILE|HEX|PEERID",
              help="A node admitted from the start (not with --nodes-admission open). Repeat per node.")
@click.option("--admit-tenant", "admit_tenants", multiple=True, metavar="KEYFILE|HEX|PEERID",
              help="A tenant admitted from the start (not with --tenants-admission open). Repeat per tenant.")
@click.option("--rule", "rule_args", multiple=True, metavar="NAME=VALUE",
              help="A chain rule other than its default (an integer; `metanode genesis rules` lists them). Repeatable.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
def init(chain_id: str, validators: tuple[str, ...], block_period_ms: int, min_block_interval_ms: int | None,
         round_timeout_base_ms: int,
         round_timeout_cap_ms: int, genesis_time_ms: int | None, nodes_admission: str, tenants_admission: str,
         admit_nodes: tuple[str, ...], admit_tenants: tuple[str, ...], rule_args: tuple[str, ...], out: Path) -> None:
    """Write a genesis file (refuses to overwrite one)."""
    from node.app.rules import NEW_CHAIN_RULES
    from node.consensus.genesis import Admission, Genesis

    keys = _distinct_keys("--validator", validators)
    if min_block_interval_ms is not None and min_block_interval_ms > block_period_ms:
        raise click.BadParameter(f"{min_block_interval_ms} is more than --block-period-ms ({block_period_ms}); "
                                 "the interval is the least gap, the period the longest", param_hint="--min-block-interval-ms")
    admission = Admission(
        nodes_admission, tenants_admission,
        _admitted("node", nodes_admission, _distinct_keys("--admit-node", admit_nodes)),
        _admitted("tenant", tenants_admission, _distinct_keys("--admit-tenant", admit_tenants)),
    )
    g = Genesis(
        chain_id=chain_id,
        genesis_time_ms=genesis_time_ms if genesis_time_ms is not None else time.time_ns() // 1_000_000,
        validators=tuple(keys), block_period_ms=block_period_ms, min_block_interval_ms=min_block_interval_ms,
        round_timeout_base_ms=round_timeout_base_ms, round_timeout_cap_ms=round_timeout_cap_ms,
        # A new chain gets the rules older chains leave at their defaults (ack_blocks); --rule overrides them.
        admission=admission, rules={**NEW_CHAIN_RULES, **parse_rules(rule_args)},
    )
    g.write(out)
    click.echo(f"wrote {out}: chain {chain_id}, {len(keys)} validators, genesis hash {g.hash.hex()}")


@genesis.command("rules")
@click.option("--json", "as_json", is_flag=True)
def rules(as_json: bool) -> None:
    """List the chain rules a genesis may set ([rules], `init --rule`): default, range, meaning."""
    from node.consensus.genesis_rules import RULES

    if as_json:
        click.echo(json.dumps({name: {"default": r.default, "min": r.low, "max": r.high, "meaning": r.meaning}
                               for name, r in RULES.items()}, indent=2))
        return
    width = max(map(len, RULES))
    for name, r in RULES.items():
        click.echo(f"{name:<{width}}  default {r.default:<6} {f'{r.low}..{r.high}':<11} {r.meaning}")


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
        "block_period_ms": g.block_period_ms, "min_block_interval_ms": g.min_interval_ms, "quorum": g.validator_set.quorum,
        "validators": [{"public_key": k.hex(), "peer_id": peer_id_from_public_key(k)} for k in g.validators],
        "admission": {
            "nodes": g.admission.nodes, "tenants": g.admission.tenants,
            "admitted_nodes": [k.hex() for k in g.admission.admitted_nodes],
            "admitted_tenants": [k.hex() for k in g.admission.admitted_tenants],
        },
        "rules": dict(g.rules),
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"chain {info['chain_id']}  genesis hash {info['hash']}")
    interval = "" if g.min_interval_ms == g.block_period_ms else f" (blocks with transactions from {g.min_interval_ms} ms)"
    click.echo(f"{len(g.validators)} validators, quorum {info['quorum']}, block period {g.block_period_ms} ms{interval}")
    for v in info["validators"]:
        click.echo(f"  {v['peer_id']}  {v['public_key']}")
    admission = info["admission"]
    click.echo(f"admission: nodes {admission['nodes']} ({len(admission['admitted_nodes'])} admitted), "
               f"tenants {admission['tenants']} ({len(admission['admitted_tenants'])} admitted)")
    changed = g.changed_rules()
    click.echo("rules: " + (", ".join(f"{k} = {v}" for k, v in changed.items()) if changed else "all defaults")
               + " (`metanode genesis rules` lists the defaults)")


def parse_rules(args: tuple[str, ...]) -> dict[str, int]:
    """``--rule NAME=VALUE`` options as {name: value}; each error names the option as given."""
    from node.consensus.genesis_rules import RULES, rules_inconsistency

    chosen: dict[str, int] = {}
    given: dict[str, str] = {}
    for arg in args:
        name, sep, text = arg.partition("=")
        name, text = name.strip(), text.strip()
        if not sep or not name:
            raise UserError(f"--rule {arg!r}: expected NAME=VALUE, e.g. max_attempts=5", exit_code=2)
        rule = RULES.get(name)
        if rule is None:
            raise UserError(f"--rule {arg!r}: unknown rule {name!r}; expected one of {sorted(RULES)}", exit_code=2)
        if name in chosen:
            raise UserError(f"--rule {arg!r}: rule {name} is already set by --rule {given[name]!r}", exit_code=2)
        try:
            value = int(text, 10)
        except ValueError:
            raise UserError(f"--rule {arg!r}: expected an integer value, got {text!r}", exit_code=2) from None
        if not rule.low <= value <= rule.high:
            raise UserError(f"--rule {arg!r}: {name} must be {rule.low}..{rule.high}, got {value}", exit_code=2)
        chosen[name], given[name] = value, arg
    problem = rules_inconsistency({**{n: r.default for n, r in RULES.items()}, **chosen})
    if problem is not None:
        name, must_be = problem
        value = chosen.get(name, RULES[name].default)
        where = f"--rule {given[name]!r}" if name in given else f"--rule (default {name} = {value})"
        raise UserError(f"{where}: {name} must be {must_be}, got {value}", exit_code=2)
    return chosen


def _distinct_keys(option: str, values: tuple[str, ...]) -> list[bytes]:
    keys = [_public_key(v, option) for v in values]
    for key, text in zip(keys, values, strict=True):
        if keys.count(key) > 1:
            raise UserError(f"{option} {text!r}: the same key is listed twice", exit_code=2)
    return keys


def _admitted(what: str, policy: str, keys: list[bytes]) -> tuple[bytes, ...]:
    """The keys admitted from the start, if ``policy`` takes them (errors name the options)."""
    if policy == "open" and keys:
        raise UserError(f"--admit-{what}: only with --{what}s-admission allow-list or by-vote "
                        f"(under open every {what} is admitted)", exit_code=2)
    if policy == "allow-list" and not keys:
        raise UserError(f"--{what}s-admission allow-list: name at least one {what} with --admit-{what} "
                        "(by-vote starts with nobody admitted)", exit_code=2)
    return tuple(keys)


def _public_key(text: str, option: str = "--validator") -> bytes:
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
            raise UserError(f"{option} {text!r}: {exc}", exit_code=2) from None
    try:
        return Identity.load(text).public_key
    except KeyFileError as exc:
        raise UserError(f"{option} {text!r}: not a public key, a peer id or a usable key file ({exc})", exit_code=2) from None
