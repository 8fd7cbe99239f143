"""The fast parameter acceptor says "valid" only where jsonschema agrees, on
generated schemas and on every schema a real node registers."""

from __future__ import annotations

import jsonschema
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.p2p.client import connect_to_node
from node.p2p.jsonrpc import Method, RpcError
from node.p2p.schema_fast import compile_acceptor
from tests.consensus.test_chain_rpc import single_validator
from tests.support import running_daemon

_TEXT = st.text(alphabet="0123456789abcdefAZ-_ .é", max_size=12)
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 70_000), st.floats(-10, 10, allow_nan=False),
                     _TEXT, st.sampled_from(["", "00", "0a", "ab" * 32, "async", "commit"]))
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(_TEXT, inner, max_size=3)), max_leaves=6)

_SCALAR_SCHEMAS = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(["string", "integer", "number", "boolean"]),
    "pattern": st.sampled_from(["^[0-9a-f]{64}$", "^([0-9a-f]{2})+$", "a", "^$"]),
    "minLength": st.integers(0, 3), "maxLength": st.integers(0, 70),
    "minimum": st.one_of(st.integers(-3, 3), st.floats(-3, 3)), "maximum": st.integers(0, 65_536),
    "exclusiveMinimum": st.integers(-1, 1), "exclusiveMaximum": st.floats(0, 5),
    "enum": st.lists(st.sampled_from(["async", "sync", "commit", "", "0a"]), min_size=1, max_size=3, unique=True),
    "format": st.sampled_from(["uri", "date-time"]),
})
_NAMES = st.sampled_from(["tx", "mode", "timeout", "hash", "n"])
_OBJECT_SCHEMAS = st.fixed_dictionaries(
    {"type": st.just("object"), "properties": st.dictionaries(_NAMES, _SCALAR_SCHEMAS, max_size=4)},
    optional={"additionalProperties": st.booleans(), "required": st.lists(_NAMES, max_size=2, unique=True)})


def _jsonschema_accepts(schema, value) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(value)


_CALLS = st.dictionaries(_NAMES, st.one_of(_SCALARS, _VALUES), max_size=4)


@settings(max_examples=1500, deadline=None)
@given(schema=st.one_of(_SCALAR_SCHEMAS, _OBJECT_SCHEMAS), value=st.one_of(_SCALARS, _CALLS, _VALUES))
def test_the_acceptor_never_accepts_what_jsonschema_refuses(schema, value):
    accept = compile_acceptor(schema)
    assert accept is not None  # every generated keyword is in the subset
    if accept(value):
        assert _jsonschema_accepts(schema, value), (schema, value)


@settings(max_examples=300, deadline=None)
@given(schema=_OBJECT_SCHEMAS, data=st.data())
def test_the_acceptor_takes_most_valid_calls(schema, data):
    """Valid values built from the schema are accepted fast (the point of it)."""
    value = {}
    for name in schema["properties"]:
        if name in schema.get("required", []) or data.draw(st.booleans()):
            value[name] = data.draw(_VALUES)
    # "Not sure" is allowed only for a float (maybe an integer) or a container under an untyped schema.
    if _jsonschema_accepts(schema, value) and all(type(v) in (str, int, bool, type(None)) for v in value.values()):
        assert compile_acceptor(schema)(value)


def test_schemas_outside_the_subset_get_no_acceptor():
    assert compile_acceptor({"type": "array", "items": {"type": "string"}}) is None
    assert compile_acceptor({"type": "object", "properties": {"x": {"type": "array"}}}) is None
    assert compile_acceptor({"enum": [1, True]}) is None
    assert compile_acceptor({"type": ["string", "null"]}) is None


def test_a_method_still_names_the_bad_parameter():
    async def handler(ctx, tx, mode="async"):
        return None

    method = Method("tx_submit", handler, {"properties": {"tx": {"type": "string", "pattern": "^([0-9a-f]{2})+$"},
                                                           "mode": {"enum": ["async", "sync"]}}, "required": ["tx"]})
    assert method._accepts is not None and method.bind({"tx": "00"}) == {"tx": "00"}
    for params, named in (({"tx": "0"}, "tx"), ({"tx": "00", "mode": "x"}, "mode"), ({}, "tx"), ({"tx": "00", "y": 1}, "y")):
        try:
            method.bind(params)
        except RpcError as exc:
            assert exc.data["param"] == named
        else:
            raise AssertionError(f"{params} was accepted")


async def test_every_schema_a_node_registers_agrees_with_jsonschema(node_dir):
    cfg, _ = single_validator(node_dir, period_ms=3_600_000)
    async with running_daemon(cfg) as daemon, connect_to_node(daemon.listen_addrs()[0]) as rpc:
        methods = await rpc.call("rpc_methods")
    schemas = {m["name"]: m["params"] for m in methods}
    assert compile_acceptor(schemas["tx_submit"]) is not None and compile_acceptor(schemas["chain_nonce"]) is not None

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def check(data):
        for name, schema in schemas.items():
            accept = compile_acceptor(schema)
            if accept is None:
                continue
            names = list(schema.get("properties", {})) + ["extra"]
            value = data.draw(st.dictionaries(st.sampled_from(names), _VALUES, max_size=len(names)), label=name)
            if accept(value):
                assert _jsonschema_accepts(schema, value), (name, value)

    await trio.to_thread.run_sync(check)
