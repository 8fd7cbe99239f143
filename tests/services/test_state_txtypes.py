"""Payload schemas of the state transaction types: valid, invalid (naming the field), hostile."""

from __future__ import annotations

import copy
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.app import DEFAULT_RULES, ChainRules, parse_payload, register_tx_types
from node.app.txtypes import TX_TYPES, JobResult, JobSubmit, NodeRegister, ReceiptsBatch
from node.base.keys import Identity
from node.consensus.tx import PayloadError, TxError, TxErrorCode, TxTypeRegistry, sign_tx
from node.receipts.envelope import build_receipt

NODE = Identity.from_label("txtypes-node")
OTHER = Identity.from_label("txtypes-other")
D1 = hashlib.sha256(b"one").digest()
D2 = hashlib.sha256(b"two").digest()
JOB = hashlib.sha256(b"job").digest()


def exec_envelope(issuer: Identity = NODE, subject: bytes = JOB) -> bytes:
    return build_receipt(issuer, "job.exec", height=3, subject=subject, prev=None, fields={
        "input_root": D1, "code": D1, "policy": D1, "seed": D2, "result": D2, "witness": D1, "exit": 0,
    }).envelope


def store_envelope(issuer: Identity = NODE, subject: bytes = D1) -> bytes:
    return build_receipt(issuer, "data.store", height=3, subject=subject, prev=None,
                         fields={"content": "dataset", "tenant": NODE.public_key, "size": 10, "replicas": 2}).envelope


VALID = {
    "node.register": {"roles": ["processing", "storage"], "capacity": 4, "moniker": "proc-1"},
    "dataset.register": {"digest": D1, "size": 100, "name": "sales.csv", "format": "csv", "receipt": D2},
    "job.submit": {"type": "sql", "inputs": {"sales": D1}, "params": {"query": "SELECT 1"},
                   "replication": 3, "deadline_blocks": 10},
    "job.result": {"job": JOB, "receipt": exec_envelope()},
    "job.decline": {"job": JOB, "reason": "input_unavailable", "detail": "no peer gave a verified copy"},
    "job.ack": {"jobs": [JOB, D1]},
    "job.cancel": {"job": JOB},
    "receipts.batch": {"receipts": [store_envelope(), store_envelope(subject=D2)]},
    "gov.propose": {"action": {"kind": "admit_node", "key": D1}},
    "gov.vote": {"proposal": D2},
    "service.deploy": {"name": "daily-sales", "type": "sql", "inputs": {"sales": "sales.csv"},
                       "params": {"query": "SELECT 1"}, "replicas": 2, "policy": "processing",
                       "trigger": {"on_new_version": True}, "deadline_blocks": 10},
    "service.scale": {"name": "daily-sales", "replicas": 3},
    "service.stop": {"name": "daily-sales"},
}


def tx(tx_type: str, payload: object, identity: Identity = NODE):
    return sign_tx(identity, chain_id="txtypes", nonce=0, tx_type=tx_type, payload=payload)


def registry(rules: ChainRules | None = None) -> TxTypeRegistry:
    reg = TxTypeRegistry()
    register_tx_types(reg, rules) if rules else register_tx_types(reg)
    return reg


def test_every_type_is_registered_and_accepts_its_valid_payload():
    reg = registry()
    assert reg.names() == sorted(TX_TYPES)
    for tx_type, payload in VALID.items():
        reg.check(tx(tx_type, payload))


def test_parsed_values_are_typed_and_normalised():
    node = parse_payload(tx("node.register", VALID["node.register"]))
    assert node == NodeRegister(("processing", "storage"), 4, "proc-1")
    job = parse_payload(tx("job.submit", VALID["job.submit"]))
    assert isinstance(job, JobSubmit) and job.inputs == {"sales": D1} and job.replication == 3
    result = parse_payload(tx("job.result", VALID["job.result"]))
    assert isinstance(result, JobResult) and result.receipt.kind == "job.exec" and result.receipt.subject == JOB
    batch = parse_payload(tx("receipts.batch", VALID["receipts.batch"]))
    assert isinstance(batch, ReceiptsBatch) and [r.subject for r in batch.receipts] == [D1, D2]


def test_other_job_types_and_their_params():
    summary = {**VALID["job.submit"], "type": "summary", "params": {"input": "sales"}}
    trend = {**VALID["job.submit"], "type": "trend-analysis",
             "params": {"input": "sales", "time_column": "day", "value_column": "amount", "window": "30d"}}
    for payload in (summary, trend):
        parse_payload(tx("job.submit", payload))


def mutate(tx_type: str, path: list, value: object) -> dict:
    payload = copy.deepcopy(VALID[tx_type])
    target = payload
    for key in path[:-1]:
        target = target[key]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return payload


DELETE = object()

INVALID = [
    ("node.register", ["roles"], [], "roles"),
    ("node.register", ["roles"], ["processing", "processing"], "roles: repeats"),
    ("node.register", ["roles"], ["miner"], "roles[0]"),
    ("node.register", ["capacity"], 0, "capacity"),
    ("node.register", ["capacity"], 65, "capacity"),
    ("node.register", ["capacity"], True, "capacity"),
    ("node.register", ["moniker"], "bad name!", "moniker"),
    ("node.register", ["extra"], 1, "extra: is not a field"),
    ("dataset.register", ["digest"], b"short", "digest"),
    ("dataset.register", ["size"], -1, "size"),
    ("dataset.register", ["name"], "", "name"),
    ("dataset.register", ["name"], "a\nb", "name"),
    ("dataset.register", ["format"], "xlsx", "format"),
    ("dataset.register", ["format"], DELETE, "format: is missing"),
    ("dataset.register", ["receipt"], DELETE, "receipt: is missing"),
    ("dataset.register", ["receipt"], "ab" * 32, "receipt"),
    ("job.submit", ["type"], "mine-bitcoin", "type"),
    ("job.submit", ["inputs"], {}, "inputs"),
    ("job.submit", ["inputs"], {"Bad-Name": D1}, "inputs"),
    ("job.submit", ["inputs", "sales"], b"x" * 31, "inputs.sales"),
    ("job.submit", ["params"], {"query": "   "}, "params.query"),
    ("job.submit", ["params"], {"query": "x" * 20000}, "params.query"),
    ("job.submit", ["params"], {"query": "SELECT 1", "limit": 3}, "params.limit"),
    ("job.submit", ["params"], "SELECT 1", "params: must be a map"),
    ("job.submit", ["replication"], 0, "replication"),
    ("job.submit", ["replication"], 9, "replication"),
    ("job.submit", ["deadline_blocks"], 1, "deadline_blocks"),
    ("job.submit", ["deadline_blocks"], 10_001, "deadline_blocks"),
    ("job.result", ["job"], b"j" * 33, "job"),
    ("job.result", ["receipt"], b"\xa0", "receipt"),
    ("job.result", ["receipt"], exec_envelope(issuer=OTHER), "receipt: unexpected-issuer"),
    ("job.result", ["receipt"], exec_envelope(subject=D1), "receipt: its subject"),
    ("job.result", ["receipt"], store_envelope(), "receipt: kind data.store"),
    ("job.result", ["receipt"], exec_envelope()[:-1] + bytes([exec_envelope()[-1] ^ 1]), "receipt"),
    ("job.result", ["error"], "", "error: must be printable text"),
    ("job.result", ["error"], "x" * 301, "error: must be printable text"),
    ("job.result", ["error"], "line\nbreak", "error: must be printable text"),
    ("job.result", ["error"], "failed", "error: only a failed execution"),  # the receipt says exit 0
    ("job.cancel", ["job"], "ab" * 32, "job"),
    ("gov.propose", ["action"], "admit_node", "action: must be a map"),
    ("gov.propose", ["action", "kind"], DELETE, "action.kind: is missing"),
    ("gov.propose", ["action", "kind"], "crown_king", "action.kind: must be one of admit_node"),
    ("gov.propose", ["action", "key"], DELETE, "action.key: is missing"),
    ("gov.propose", ["action", "key"], b"k" * 31, "action.key: must be a 32-byte"),
    ("gov.propose", ["action", "extra"], 1, "action.extra: is not a field"),
    ("gov.propose", ["action"], {"kind": "set_rule", "name": "max_speed", "value": 3},
     "action.name: 'max_speed' is not a chain rule (one of max_replication,"),
    ("gov.propose", ["action"], {"kind": "set_rule", "name": "max_attempts", "value": 0},
     "action.value: max_attempts must be in 1..100, got 0"),
    ("gov.propose", ["action"], {"kind": "set_rule", "name": "max_replication", "value": 9},
     "action.value: max_replication must be in 1..8, got 9"),
    ("gov.propose", ["action"], {"kind": "set_rule", "name": "max_attempts", "value": True},
     "action.value: must be an integer, got bool"),
    ("gov.propose", ["action"], {"kind": "set_rule", "name": "max_attempts"}, "action.value: is missing"),
    ("gov.propose", ["action"], {"kind": "set_rule", "name": "max_attempts", "value": 4, "from_height": -1},
     "action.from_height: must be in 0.."),
    ("gov.propose", ["action"], {"kind": "set_rule", "name": "max_attempts", "value": 4, "key": D1},
     "action.key: is not a field"),
    ("gov.vote", ["proposal"], "ab" * 32, "proposal"),
    ("receipts.batch", ["receipts"], [], "receipts"),
    ("receipts.batch", ["receipts"], [store_envelope(), store_envelope()], "receipts[1]: repeats"),
    ("receipts.batch", ["receipts"], [exec_envelope()], "receipts[0]: kind job.exec"),
    ("receipts.batch", ["receipts"], [store_envelope(issuer=OTHER)], "receipts[0]: unexpected-issuer"),
]


@pytest.mark.parametrize(("tx_type", "path", "value", "field"), INVALID)
def test_invalid_payloads_are_refused_naming_the_field(tx_type, path, value, field):
    payload = mutate(tx_type, path, value)
    with pytest.raises(PayloadError) as caught:
        parse_payload(tx(tx_type, payload))
    assert field in str(caught.value)
    with pytest.raises(TxError) as refused:
        registry(DEFAULT_RULES).check(tx(tx_type, payload))
    assert refused.value.code == TxErrorCode.INVALID_PAYLOAD
    assert field in refused.value.message


@pytest.mark.parametrize(("path", "within_a_vote", "beyond"), [
    (["capacity"], 65, 1025),
    (["deadline_blocks"], 1, 0),
    (["deadline_blocks"], 1_000_000, 1_000_001),
    (["inputs"], {f"i{n}": D1 for n in range(17)}, {f"i{n}": D1 for n in range(257)}),
])
def test_the_chains_hooks_take_what_a_rule_vote_could_allow_and_no_more(path, within_a_vote, beyond):
    """The mempool's hooks cannot know the height a transaction lands at, nor the
    rules a vote sets there: they check against the widest bounds (RULES' ranges)."""
    tx_type = "node.register" if path == ["capacity"] else "job.submit"
    registry().check(tx(tx_type, mutate(tx_type, path, within_a_vote)))
    with pytest.raises(PayloadError):
        parse_payload(tx(tx_type, mutate(tx_type, path, within_a_vote)), DEFAULT_RULES)
    with pytest.raises(TxError) as refused:
        registry().check(tx(tx_type, mutate(tx_type, path, beyond)))
    assert refused.value.code == TxErrorCode.INVALID_PAYLOAD


def test_a_set_rule_action_parses_with_an_optional_from_height():
    action = {"kind": "set_rule", "name": "max_attempts", "value": 5}
    registry().check(tx("gov.propose", {"action": action}))
    parsed = parse_payload(tx("gov.propose", {"action": {**action, "from_height": 40}}))
    assert parsed.action.kind == "set_rule" and parsed.action.fields == {**action, "from_height": 40}


def test_summary_and_trend_params_must_name_an_input():
    for job_type, params, field in (
        ("summary", {"input": "other"}, "params.input"),
        ("trend-analysis", {"input": "sales", "time_column": "day", "value_column": "1x", "window": "30d"},
         "params.value_column"),
        ("trend-analysis", {"input": "sales", "time_column": "day", "value_column": "v", "window": "0d"},
         "params.window"),
    ):
        payload = {**VALID["job.submit"], "type": job_type, "params": params}
        with pytest.raises(PayloadError, match=field):
            parse_payload(tx("job.submit", payload))


def test_node_without_processing_role_declares_no_capacity():
    parse_payload(tx("node.register", {"roles": ["storage"], "capacity": 0, "moniker": "s"}))
    with pytest.raises(PayloadError, match="capacity: must be 0"):
        parse_payload(tx("node.register", {"roles": ["storage"], "capacity": 2, "moniker": "s"}))


def test_rules_lower_the_bounds():
    rules = ChainRules(max_replication=2, max_capacity=3, max_inputs=1)
    reg = registry(rules)
    with pytest.raises(TxError, match="replication"):
        reg.check(tx("job.submit", VALID["job.submit"]))
    with pytest.raises(TxError, match="capacity"):
        reg.check(tx("node.register", VALID["node.register"]))
    with pytest.raises(TxError, match="inputs"):
        reg.check(tx("job.submit", {**VALID["job.submit"], "replication": 2, "inputs": {"a": D1, "b": D2}}))


def test_rules_refuse_nonsense():
    with pytest.raises(ValueError, match="max_replication"):
        ChainRules(max_replication=9)
    with pytest.raises(ValueError, match="max_attempts"):
        ChainRules(max_attempts=0)
    with pytest.raises(ValueError, match="min_deadline_blocks"):
        ChainRules(min_deadline_blocks=5, max_deadline_blocks=4)


cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.text(max_size=20) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def near_valid(tx_type: str) -> st.SearchStrategy:
    """The valid payload with one field replaced by an arbitrary value (or the whole payload)."""
    valid = VALID[tx_type]
    return st.one_of(
        cbor_values,
        st.tuples(st.sampled_from(sorted(valid)), cbor_values).map(lambda kv: {**valid, kv[0]: kv[1]}),
    )


@settings(max_examples=60, deadline=None)
@given(data=st.data(), tx_type=st.sampled_from(TX_TYPES))
def test_hostile_payloads_raise_only_payload_errors(data, tx_type):
    payload = data.draw(near_valid(tx_type))
    try:
        parse_payload(tx(tx_type, payload))
    except PayloadError as exc:
        assert str(exc)
