"""The daemon's per-method RPC counters: each call and error counted under its
method, and the label set bounded (names come from clients)."""

from __future__ import annotations

from node.roles.metrics import MAX_RPC_METHOD_LABELS, OTHER_METHOD, NodeMetrics


def counts(metrics: NodeMetrics, name: str) -> dict[str, float]:
    return {sample.labels["method"]: sample.value for family in metrics.registry.collect()
            for sample in family.samples if sample.name == name}


def test_calls_and_errors_by_method_with_bounded_labels() -> None:
    metrics = NodeMetrics()
    for ok in (True, True, False):
        metrics.on_rpc("chain_head", ok)
    for i in range(MAX_RPC_METHOD_LABELS + 5):  # a client inventing names
        metrics.on_rpc(f"made_up_{i}", False)
    calls, errors = counts(metrics, "metanode_rpc_calls_total"), counts(metrics, "metanode_rpc_errors_total")
    assert calls["chain_head"] == 3 and errors["chain_head"] == 1
    assert len(calls) == MAX_RPC_METHOD_LABELS + 1  # the first names, then one label for all others
    assert calls[OTHER_METHOD] == 6 and errors[OTHER_METHOD] == 6
    metrics.on_rpc("chain_head", True)  # a known method keeps its own label
    assert counts(metrics, "metanode_rpc_calls_total")["chain_head"] == 4



def test_a_method_without_errors_exports_no_error_series() -> None:
    metrics = NodeMetrics()
    metrics.on_rpc("node_status", True)
    assert counts(metrics, "metanode_rpc_calls_total") == {"node_status": 1}
    assert counts(metrics, "metanode_rpc_errors_total") == {}
    metrics.on_rpc("node_status", False)
    assert counts(metrics, "metanode_rpc_errors_total") == {"node_status": 1}
