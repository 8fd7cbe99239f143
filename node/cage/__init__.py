"""DockLock: the deterministic execution cage (policies, confinement layers,
fork-server worker pool, witness records).

Public API (imported lazily, so ``import node.cage`` stays cheap):

* ``CagePool(policies=None, *, size=1, function_modules=(), python_path=())``
  with ``.run(job) -> JobOutcome``, ``await .run_async(job)``, ``.close()``
* ``JobSpec``, ``JobOutcome``, ``CageError``
* ``Policy``, ``load_policies(path)``, ``default_policy_path()``
* ``register_function(name)``, ``JobContext``, ``Table``
* ``confine_service(policy, *, data_dir, read_paths=(), allow_network=None) -> AppliedConfinement``
* ``probe_host() -> HostCapabilities``
* ``ReplayReport``; the function itself is ``node.cage.replay.replay(pool, witness_file, input_overrides=None)``
  (an export may not share a submodule's name: importing the submodule would shadow it)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CagePool": "node.cage.pool",
    "JobSpec": "node.cage.job",
    "JobOutcome": "node.cage.job",
    "CageError": "node.cage.job",
    "Policy": "node.cage.policy",
    "load_policies": "node.cage.policy",
    "default_policy_path": "node.cage.policy",
    "register_function": "node.cage.functions",
    "JobContext": "node.cage.functions",
    "Table": "node.cage.functions",
    "confine_service": "node.cage.service",
    "AppliedConfinement": "node.cage.service",
    "probe_host": "node.cage.layers",
    "HostCapabilities": "node.cage.layers",
    "ReplayReport": "node.cage.replay",
}

# Spelled out (not derived from _EXPORTS) so that tools reading the source see the API;
# tests/cage/test_cage_exports.py keeps the two in step.
__all__ = [
    "AppliedConfinement", "CageError", "CagePool", "HostCapabilities", "JobContext", "JobOutcome",
    "JobSpec", "Policy", "ReplayReport", "Table", "confine_service", "default_policy_path",
    "load_policies", "probe_host", "register_function",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'node.cage' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
