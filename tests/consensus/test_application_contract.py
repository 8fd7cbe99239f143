"""The contract between the chain and the application (node/consensus/app.py):
ChainApplication and EmptyApplication implement all of it, and consensus calls
nothing of an application but the contract's methods."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from node.app.chain_app import ChainApplication
from node.base.db import open_node_db
from node.consensus.app import APPLICATION_METHODS, EMPTY_COMMITMENT, Application, EmptyApplication
from node.consensus.block import EMPTY_ROOT
from node.consensus.store import ChainStore
from node.consensus.tx import TxTypeRegistry
from node.consensus.validators import ValidatorSet

CONSENSUS = Path(__file__).resolve().parents[2] / "node" / "consensus"


def test_the_contract_is_the_abci_shaped_method_set():
    assert APPLICATION_METHODS == {
        "register_tx_types", "catch_up", "check_tx_against_state", "commitment_after", "accepts_proposal",
        "apply_final_block", "rejection_of", "validator_set_at",
    }
    for name in APPLICATION_METHODS:
        assert inspect.getdoc(getattr(Application, name)), f"Application.{name} has no docstring"


def test_chain_application_implements_the_whole_contract(tmp_path):
    conn = open_node_db(tmp_path)
    app: Application = ChainApplication(conn, ChainStore(conn, first_height=1, first_parent=b"\0" * 32))
    assert isinstance(app, Application)
    for implementation in (ChainApplication, EmptyApplication):
        for name in APPLICATION_METHODS:
            contract = inspect.signature(getattr(Application, name))
            implemented = inspect.signature(getattr(implementation, name))
            assert list(implemented.parameters) == list(contract.parameters), (implementation.__name__, name)
    # Its answers on an empty chain: its types registered, an empty receipt log, nothing refused.
    registry = TxTypeRegistry()
    app.register_tx_types(registry)
    assert {"job.submit", "job.result", "receipts.batch", "node.register"} <= set(registry.names())
    app.catch_up()
    assert app.commitment_after([]) == EMPTY_COMMITMENT
    assert app.rejection_of(b"\1" * 32) is None


def test_the_empty_application_commits_to_the_empty_receipt_log_and_keeps_its_set():
    assert EMPTY_COMMITMENT.header_fields() == {"receipts_size": 0, "receipts_root": EMPTY_ROOT}
    validators = ValidatorSet([b"\1" * 32, b"\2" * 32])
    app = EmptyApplication(validators)
    assert isinstance(app, Application)
    assert app.validator_set_at(1) == app.validator_set_at(10**6) == validators


def _app_attributes(path: Path) -> set[str]:
    """Attributes read off anything named ``app`` (``self.app.x``, ``chain.app.x``, ``app.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute):
            owner = node.value
            if (isinstance(owner, ast.Attribute) and owner.attr == "app") or (isinstance(owner, ast.Name) and owner.id == "app"):
                found.add(node.attr)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr":
            target = node.args[0] if node.args else None
            assert not (isinstance(target, ast.Attribute) and target.attr == "app"), f"{path}: getattr on the application"
    return found


def test_consensus_calls_only_contract_methods_of_the_application():
    for name in ("service.py", "rpc.py"):
        used = _app_attributes(CONSENSUS / name)
        assert used, f"{name} no longer talks to the application?"
        assert used <= APPLICATION_METHODS, f"{name} reaches past the contract: {sorted(used - APPLICATION_METHODS)}"
