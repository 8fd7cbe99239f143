"""JSON-RPC 2.0 rules, including every example of the specification."""

from __future__ import annotations

import json

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from node.p2p.jsonrpc import CallContext, Dispatcher, Registry, RpcError

CTX = CallContext(peer_id="tester")


def make_dispatcher(timeout: float = 5.0) -> Dispatcher:
    registry = Registry()

    async def subtract(ctx, minuend, subtrahend):
        return minuend - subtrahend

    async def update(ctx, a=None, b=None, c=None, d=None, e=None):
        return None

    async def sum_(ctx, values):
        return sum(values)

    async def get_data(ctx):
        return ["hello", 5]

    async def boom(ctx):
        raise KeyError("bug")

    async def app_error(ctx):
        raise RpcError(1001, "mempool full", {"limit": 10})

    async def slow(ctx):
        await trio.sleep(10)

    registry.register("test_subtract", subtract, {"properties": {"minuend": {"type": "integer"}, "subtrahend": {"type": "integer"}}, "required": ["minuend", "subtrahend"]})
    registry.register("test_update", update, {"properties": {k: {"type": "integer"} for k in "abcde"}})
    registry.register("test_notifyHello", update, {"properties": {k: {"type": "integer"} for k in "abcde"}})
    registry.register("test_sum", sum_, {"properties": {"values": {"type": "array", "items": {"type": "integer"}}}, "required": ["values"]})
    registry.register("test_getData", get_data)
    registry.register("test_boom", boom)
    registry.register("test_appError", app_error)
    registry.register("test_slow", slow, timeout=0.05)
    return Dispatcher(registry, default_timeout=timeout)


SHARED = make_dispatcher()  # Hypothesis examples reuse one: building schemas is the slow part


async def call(dispatcher: Dispatcher, message) -> object:
    raw = message if isinstance(message, bytes) else json.dumps(message).encode()
    out = await dispatcher.handle(raw, CTX)
    return None if out is None else json.loads(out)


async def test_positional_and_named_params():
    d = make_dispatcher()
    assert await call(d, {"jsonrpc": "2.0", "method": "test_subtract", "params": [42, 23], "id": 1}) == {"jsonrpc": "2.0", "result": 19, "id": 1}
    assert await call(d, {"jsonrpc": "2.0", "method": "test_subtract", "params": {"subtrahend": 23, "minuend": 42}, "id": 3}) == {"jsonrpc": "2.0", "result": 19, "id": 3}


async def test_notifications_get_no_response_even_on_error():
    d = make_dispatcher()
    assert await call(d, {"jsonrpc": "2.0", "method": "test_update", "params": [1, 2, 3, 4, 5]}) is None
    assert await call(d, {"jsonrpc": "2.0", "method": "test_missing"}) is None
    assert await call(d, {"jsonrpc": "2.0", "method": "test_boom"}) is None


async def test_method_not_found():
    d = make_dispatcher()
    out = await call(d, {"jsonrpc": "2.0", "method": "foobar", "id": "1"})
    assert out["error"]["code"] == -32601 and out["id"] == "1"


async def test_parse_error():
    d = make_dispatcher()
    out = await call(d, b'{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]')
    assert out["error"]["code"] == -32700 and out["id"] is None


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"NaN", b'{"a": Infinity}', b"[" * 100000])
async def test_parse_error_for_non_json(raw):
    out = await call(make_dispatcher(), raw)
    assert out["error"]["code"] == -32700


async def test_invalid_request_object():
    out = await call(make_dispatcher(), {"jsonrpc": "2.0", "method": 1, "params": "bar"})
    assert out["error"]["code"] == -32600 and out["id"] is None


@pytest.mark.parametrize(
    "request_",
    [
        {"jsonrpc": "1.0", "method": "test_getData", "id": 1},
        {"method": "test_getData", "id": 1},
        {"jsonrpc": "2.0", "method": "test_getData", "id": True},
        {"jsonrpc": "2.0", "method": "test_getData", "id": [1]},
        {"jsonrpc": "2.0", "method": "test_getData", "id": {"a": 1}},
        {"jsonrpc": "2.0", "method": "test_getData", "params": 3, "id": 1},
        {"jsonrpc": "2.0", "method": "test_getData", "id": 1, "extra": 1},
    ],
)
async def test_more_invalid_requests(request_):
    out = await call(make_dispatcher(), request_)
    assert out["error"]["code"] == -32600


async def test_batch_invalid_json():
    out = await call(make_dispatcher(), b'[{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},{"jsonrpc": "2.0", "method"]')
    assert out["error"]["code"] == -32700


async def test_empty_batch():
    out = await call(make_dispatcher(), [])
    assert isinstance(out, dict) and out["error"]["code"] == -32600 and out["id"] is None


async def test_invalid_batch_of_one_and_three():
    assert await call(make_dispatcher(), [1]) == [{"jsonrpc": "2.0", "error": {"code": -32600, "message": "Invalid Request", "data": {"reason": "a request must be a JSON object"}}, "id": None}]
    out = await call(make_dispatcher(), [1, 2, 3])
    assert [o["error"]["code"] for o in out] == [-32600] * 3


async def test_mixed_batch():
    out = await call(
        make_dispatcher(),
        [
            {"jsonrpc": "2.0", "method": "test_sum", "params": [[1, 2, 4]], "id": "1"},
            {"jsonrpc": "2.0", "method": "test_notifyHello", "params": [7]},
            {"jsonrpc": "2.0", "method": "test_subtract", "params": [42, 23], "id": "2"},
            {"foo": "boo"},
            {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
            {"jsonrpc": "2.0", "method": "test_getData", "id": "9"},
        ],
    )
    assert [(o["id"], o.get("result"), o.get("error", {}).get("code")) for o in out] == [
        ("1", 7, None),
        ("2", 19, None),
        (None, None, -32600),
        ("5", None, -32601),
        ("9", ["hello", 5], None),
    ]


async def test_batch_of_notifications_returns_nothing():
    assert await call(make_dispatcher(), [{"jsonrpc": "2.0", "method": "test_notifyHello", "params": [1, 2, 4]}, {"jsonrpc": "2.0", "method": "test_update", "params": [7]}]) is None


async def test_invalid_params_name_the_parameter():
    d = make_dispatcher()
    out = await call(d, {"jsonrpc": "2.0", "method": "test_subtract", "params": {"minuend": "x", "subtrahend": 1}, "id": 1})
    assert out["error"]["code"] == -32602 and out["error"]["data"]["param"] == "minuend"
    out = await call(d, {"jsonrpc": "2.0", "method": "test_subtract", "params": {"minuend": 1}, "id": 1})
    assert out["error"]["data"] == {"param": "subtrahend", "reason": "missing required parameter"}
    out = await call(d, {"jsonrpc": "2.0", "method": "test_subtract", "params": {"minuend": 1, "subtrahend": 2, "bogus": 3}, "id": 1})
    assert out["error"]["data"] == {"param": "bogus", "reason": "unknown parameter"}
    out = await call(d, {"jsonrpc": "2.0", "method": "test_subtract", "params": [1, 2, 3], "id": 1})
    assert out["error"]["code"] == -32602
    out = await call(d, {"jsonrpc": "2.0", "method": "test_sum", "params": {"values": [1, "x"]}, "id": 1})
    assert out["error"]["data"]["param"] == "values.1"


async def test_handler_bug_is_internal_error_not_a_crash():
    out = await call(make_dispatcher(), {"jsonrpc": "2.0", "method": "test_boom", "id": 7})
    assert out["error"]["code"] == -32603 and "KeyError" in out["error"]["data"]["reason"]


async def test_application_error_keeps_its_code_and_data():
    out = await call(make_dispatcher(), {"jsonrpc": "2.0", "method": "test_appError", "id": 7})
    assert out["error"] == {"code": 1001, "message": "mempool full", "data": {"limit": 10}}


async def test_every_request_has_a_deadline():
    out = await call(make_dispatcher(), {"jsonrpc": "2.0", "method": "test_slow", "id": 7})
    assert out["error"]["code"] == -32001


async def test_rpc_methods_lists_schemas():
    out = await call(make_dispatcher(), {"jsonrpc": "2.0", "method": "rpc_methods", "id": 1})
    by_name = {m["name"]: m for m in out["result"]}
    assert by_name["test_subtract"]["params"]["required"] == ["minuend", "subtrahend"]
    assert "rpc_methods" in by_name


def test_registry_refuses_bad_names_and_duplicates():
    registry = Registry()
    with pytest.raises(ValueError):
        registry.register("rpc.x", lambda ctx: None)
    with pytest.raises(ValueError):
        registry.register("nonamespace", lambda ctx: None)
    with pytest.raises(ValueError):
        registry.register("rpc_methods", lambda ctx: None)


@given(st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_hostile_bytes_always_get_a_valid_response(data):
    async def run():
        out = await SHARED.handle(data, CTX)
        if out is not None:
            parsed = json.loads(out)
            items = parsed if isinstance(parsed, list) else [parsed]
            for item in items:
                assert item["jsonrpc"] == "2.0" and ("result" in item) != ("error" in item)

    trio.run(run)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
    max_leaves=10,
)


@given(st.dictionaries(st.sampled_from(["jsonrpc", "method", "params", "id", "x"]), json_values | st.sampled_from(["2.0", "test_subtract", "test_getData"])))
@settings(max_examples=300, deadline=None)
def test_hostile_requests_never_escape(request_):
    async def run():
        out = await SHARED.handle(json.dumps(request_).encode(), CTX)
        if out is not None:
            assert json.loads(out)["jsonrpc"] == "2.0"

    trio.run(run)
