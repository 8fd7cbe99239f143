"""The consensus protocols' frame limit fits the largest block the genesis
allows, whatever the node's own ``[limits] max_frame_bytes`` says: a node whose
limit were below it could not receive a full block and would fall behind."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from node.base.config import parse_config
from node.base.keys import Identity
from node.consensus.block import max_encoded_block_size
from node.consensus.genesis import Genesis, Limits
from node.roles.validator import consensus_frame_limit


def _config(tmp_path: Path, max_frame: int):  # type: ignore[no-untyped-def]
    doc = {"node": {"identity_key": "node.key", "data_dir": "data"}, "limits": {"max_frame_bytes": max_frame}}
    return parse_config(doc, tmp_path / "node.toml")


def test_the_default_limits_fit_a_full_default_block(tmp_path: Path) -> None:
    genesis = Genesis(chain_id="frames", genesis_time_ms=1, validators=(Identity.from_label("v").public_key,))
    config = _config(tmp_path, 4 * 1024 * 1024)
    assert config.limits["max_frame_bytes"] < max_encoded_block_size(genesis)  # the case this guards
    assert consensus_frame_limit(config, genesis) > max_encoded_block_size(genesis)


def test_a_larger_genesis_block_raises_the_consensus_frames_but_not_a_larger_node_limit(tmp_path: Path) -> None:
    big = Genesis(chain_id="frames", genesis_time_ms=1, validators=(Identity.from_label("v").public_key,),
                  limits=dataclasses.replace(Limits(), max_block_bytes=32 * 1024 * 1024))
    assert consensus_frame_limit(_config(tmp_path, 1024), big) > max_encoded_block_size(big) > 32 * 1024 * 1024
    assert consensus_frame_limit(_config(tmp_path, 64 * 1024 * 1024), big) == 64 * 1024 * 1024
