"""Layer 9, cli: the ``metanode`` command line: parses, calls, prints.

``main`` is the click root; one module per command group (analytics, receipts
and audit, cage, keys, mesh, daemon, testnet, demo, genesis, rpc); ``present``
formats tables and results. Groups load lazily so a command pays only for the
layers it uses.
"""

from node.cli.main import main

__all__ = ["main"]
