"""node/base/schema.py: the one validation mechanism every TOML file goes through.

Each failure is one ConfigError in one format (``FILE: <key path>: expected
WHAT, got FOUND``), with the key path spelled as the file spells it."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import jsonschema
import pytest

from node.base.config import NODE_CONFIG
from node.base.errors import ConfigError
from node.base.schema import (
    OPTIONAL,
    REQUIRED,
    Array,
    ArrayOfTables,
    Invalid,
    Key,
    Schema,
    Table,
    TableOf,
    expected,
    parse_toml,
    read_toml,
)
from node.cage.policy import POLICY_FILE
from node.consensus.genesis_schema import GENESIS_FILE
from node.testnet.manifest import MANIFEST

ROOT = Path(__file__).resolve().parents[1]


def _ends_before_its_start(values: dict) -> None:
    for i, run in enumerate(values["run"]):
        if run["end_s"] < run["start_s"]:
            raise Invalid(("run", i, "end_s"), expected(f"at least start_s ({run['start_s']})", run["end_s"]))


SCHEMA = Schema(
    Table({
        "name": Key(str, REQUIRED, "what the thing is called"),
        "level": Key(str, "info", choices=("info", "debug")),
        "server": Table({
            "port": Key(int, 8080, ge=1, le=65535),
            "timeout": Key(float, 2.5, gt=0, le=60, unit="seconds"),
            "secure": Key(bool, False),
            "peers": Array(Key(str, pattern=r"[a-z]+", expect="lowercase letters"), [], max_items=3, unique=True, noun="peer"),
            "tls": Table({"cert": Key(str, REQUIRED)}, default=OPTIONAL),
        }),
        "run": ArrayOfTables(Table({
            "start_s": Key(float, REQUIRED),
            "end_s": Key(float, REQUIRED),
            "note": Key(str, OPTIONAL),
        })),
        "profiles": TableOf(Table({"weight": Key(int, 1, gt=0)}), header="profiles.<name>"),
    }),
    checks=[_ends_before_its_start],
)


def good() -> dict:
    return {
        "name": "x",
        "server": {"port": 9000, "peers": ["ab", "cd"]},
        "run": [{"start_s": 0, "end_s": 1.5}, {"start_s": 2, "end_s": 3, "note": "second"}],
        "profiles": {"fast": {"weight": 3}, "slow": {}},
    }


def error(doc: dict) -> str:
    with pytest.raises(ConfigError) as info:
        SCHEMA.validate(doc, "f.toml")
    assert info.value.exit_code == 2
    return str(info.value)


def test_defaults_fill_in_and_the_input_is_not_changed():
    doc = good()
    before = copy.deepcopy(doc)
    values = SCHEMA.validate(doc, "f.toml")
    assert doc == before
    assert values["level"] == "info"
    assert values["server"] == {"port": 9000, "timeout": 2.5, "secure": False, "peers": ["ab", "cd"]}  # tls: OPTIONAL, left out
    assert values["run"][0] == {"start_s": 0, "end_s": 1.5} and values["run"][1]["note"] == "second"
    assert values["profiles"] == {"fast": {"weight": 3}, "slow": {"weight": 1}}
    # A table that is left out is read as empty: its keys take their defaults.
    assert SCHEMA.validate({"name": "x"}, "f.toml")["server"]["port"] == 8080


def test_mutable_defaults_are_not_shared():
    first = SCHEMA.validate({"name": "a"}, "f.toml")
    first["server"]["peers"].append("zz")
    first["run"].append({})
    second = SCHEMA.validate({"name": "b"}, "f.toml")
    assert second["server"]["peers"] == [] and second["run"] == []


@pytest.mark.parametrize("change, message", [
    # unknown keys, at the top, in a table, in a nested table, in an array-of-tables item, in a named table
    (lambda d: d.update(extra={}), "f.toml: unknown section [extra]; expected one of ['level', 'name', 'profiles', 'run', 'server']"),
    (lambda d: d.update(extra=1), "f.toml: unknown key 'extra'; expected one of ['level', 'name', 'profiles', 'run', 'server']"),
    (lambda d: d["server"].update(prot=1), "f.toml: [server] unknown key 'prot'; expected one of ['peers', 'port', 'secure', 'timeout', 'tls']"),
    (lambda d: d["server"].update(tls={"cert": "c", "key": "k"}), "f.toml: [server.tls] unknown key 'key'; expected one of ['cert']"),
    (lambda d: d["run"][1].update(stop=1), "f.toml: [[run]] #2 unknown key 'stop'; expected one of ['end_s', 'note', 'start_s']"),
    (lambda d: d["profiles"]["fast"].update(speed=1), "f.toml: [profiles.fast] unknown key 'speed'; expected one of ['weight']"),
    # wrong types: TOML booleans are not numbers, an integer key refuses floats, a number key takes integers
    (lambda d: d["server"].update(port="80"), "f.toml: [server] port: expected an integer, got str '80'"),
    (lambda d: d["server"].update(port=True), "f.toml: [server] port: expected an integer, got bool True"),
    (lambda d: d["server"].update(port=80.0), "f.toml: [server] port: expected an integer, got float 80.0"),
    (lambda d: d["server"].update(timeout=False), "f.toml: [server] timeout: expected a number, got bool False"),
    (lambda d: d["server"].update(secure="yes"), "f.toml: [server] secure: expected true or false, got str 'yes'"),
    (lambda d: d.update(server=5), "f.toml: [server]: expected a table, got int 5"),
    (lambda d: d.update(run={"start_s": 1}), "f.toml: [[run]]: expected an array of tables, got dict {'start_s': 1}"),
    (lambda d: d["server"].update(peers="ab"), "f.toml: [server] peers: expected a list of peers, got str 'ab'"),
    (lambda d: d["server"].update(peers=["ab", 7]), "f.toml: [server] peers[1]: expected a string, got int 7"),
    (lambda d: d["run"][0].update(end_s="soon"), "f.toml: [[run]] #1 end_s: expected a number, got str 'soon'"),
    # out of range, choices, patterns, list lengths and duplicates
    (lambda d: d["server"].update(port=0), "f.toml: [server] port: expected 1..65535, got 0"),
    (lambda d: d["server"].update(timeout=0), "f.toml: [server] timeout: expected more than 0 and at most 60 seconds, got 0"),
    (lambda d: d["profiles"]["slow"].update(weight=0), "f.toml: [profiles.slow] weight: expected a positive integer, got 0"),
    (lambda d: d["server"].update(timeout=float("nan")), "f.toml: [server] timeout: expected more than 0 and at most 60 seconds, got nan"),
    (lambda d: d["server"].update(timeout=float("inf")), "f.toml: [server] timeout: expected more than 0 and at most 60 seconds, got inf"),
    (lambda d: d.update(level="loud"), "f.toml: level: expected one of ['info', 'debug'], got 'loud'"),
    (lambda d: d["server"].update(peers=["ab", "C"]), "f.toml: [server] peers[1]: expected lowercase letters, got 'C'"),
    (lambda d: d["server"].update(peers=["a", "b", "c", "d"]), "f.toml: [server] peers: expected 0..3 peers, got 4"),
    (lambda d: d["server"].update(peers=["ab", "ab"]), "f.toml: [server] peers: expected distinct peers, got 'ab' twice"),
    # missing required keys, at the top, in a nested table, in an array-of-tables item
    (lambda d: d.pop("name"), "f.toml: name is required (what the thing is called)"),
    (lambda d: d["server"].update(tls={}), "f.toml: [server.tls] cert is required (a string)"),
    (lambda d: d["run"][1].pop("start_s"), "f.toml: [[run]] #2 start_s is required (a number)"),
    # a domain check runs after the schema, in the same format
    (lambda d: d["run"][1].update(end_s=1), "f.toml: [[run]] #2 end_s: expected at least start_s (2), got 1"),
])
def test_every_failure_names_file_key_expectation_and_value(change, message):
    doc = good()
    change(doc)
    assert error(doc) == message


def test_checks_run_only_on_schema_valid_documents():
    seen = []
    schema = Schema(Table({"n": Key(int, 1)}), checks=[lambda values: seen.append(values)])
    with pytest.raises(ConfigError):
        schema.validate({"n": "one"}, "f.toml")
    assert seen == []
    schema.validate({}, "f.toml")
    assert seen == [{"n": 1}]


def test_loader_checks_on_built_objects_render_the_same_way():
    def port_is_free(server: dict) -> None:
        raise Invalid(("server", "port"), f"{server['port']} is in use")

    with pytest.raises(ConfigError, match=r"^f.toml: \[server\] port: 9000 is in use$"):
        SCHEMA.check(SCHEMA.validate(good(), "f.toml")["server"], "f.toml", [port_is_free])


def test_key_paths_are_spelled_as_in_the_file():
    assert SCHEMA.where(()) == ""
    assert SCHEMA.where(("name",)) == "name"
    assert SCHEMA.where(("server",)) == "[server]"
    assert SCHEMA.where(("server", "peers", 2)) == "[server] peers[2]"
    assert SCHEMA.where(("server", "tls", "cert")) == "[server.tls] cert"
    assert SCHEMA.where(("run",)) == "[[run]]"
    assert SCHEMA.where(("run", 0)) == "[[run]] #1"
    assert SCHEMA.where(("run", 4, "note")) == "[[run]] #5 note"
    assert SCHEMA.where(("profiles", "my profile", "weight")) == '[profiles."my profile"] weight'


def test_named_tables_can_be_required_to_exist():
    schema = Schema(Table({"policies": TableOf(Table({}), min_tables=1, header="policies.<name>")}))
    with pytest.raises(ConfigError, match=r"^f.toml: \[policies\]: expected at least 1 \[policies.<name>\] table\(s\), got 0$"):
        schema.validate({}, "f.toml")


def test_reading_files(tmp_path):
    with pytest.raises(ConfigError, match="^.*missing.toml: no such thing file$"):
        read_toml(tmp_path / "missing.toml", "thing file")
    (tmp_path / "latin.toml").write_bytes(b'name = "\xe9"\n')
    with pytest.raises(ConfigError, match="latin.toml: thing file is not UTF-8 text$"):
        read_toml(tmp_path / "latin.toml", "thing file")
    with pytest.raises(ConfigError, match="^bad.toml: not valid TOML: "):
        parse_toml("[server\n", "bad.toml")
    with pytest.raises(ConfigError, match="cannot read thing file"):
        read_toml(tmp_path, "thing file")  # a directory
    (tmp_path / "ok.toml").write_text('name = "x"\n[server]\nport = 1\n')
    assert SCHEMA.validate(read_toml(tmp_path / "ok.toml", "thing file"), "ok.toml")["server"]["port"] == 1


# -- the schemas of the real files, cross-checked against the jsonschema library --------------------------------

SHIPPED = [
    (NODE_CONFIG, path) for path in sorted((ROOT / "config" / "examples").glob("*.toml")) if path.name != "genesis.toml"
] + [
    (GENESIS_FILE, ROOT / "config" / "examples" / "genesis.toml"),
    (POLICY_FILE, ROOT / "config" / "policies.toml"),
] + [(MANIFEST, path) for path in sorted((ROOT / "testnet" / "manifests").glob("*.toml"))]


@pytest.mark.parametrize("schema, path", SHIPPED, ids=lambda x: x.name if isinstance(x, Path) else "")
def test_shipped_files_are_valid_here_and_under_jsonschema(schema, path):
    doc = tomllib.loads(path.read_text())
    schema.validate(doc, str(path))
    exported = schema.json_schema()
    jsonschema.Draft202012Validator.check_schema(exported)
    jsonschema.Draft202012Validator(exported).validate(doc)


@pytest.mark.parametrize("schema, doc", [
    (NODE_CONFIG, {"node": {"identity_key": "k"}}),
    (NODE_CONFIG, {"node": {"identity_key": "k", "data_dir": "d", "roles": ["miner"]}}),
    (NODE_CONFIG, {"node": {"identity_key": "k", "data_dir": "d"}, "netwrk": {}}),
    (NODE_CONFIG, {"node": {"identity_key": "k", "data_dir": "d"}, "limits": {"max_peers": 0}}),
    (NODE_CONFIG, {"node": {"identity_key": "k", "data_dir": "d"}, "network": {"keepalive_interval": True}}),
    (POLICY_FILE, {"policies": {}}),
    (POLICY_FILE, {"policies": {"p": {"limits": {"memory_mb": 0}}}}),
    (POLICY_FILE, {"policies": {"p": {"deny": ["fork", "fork"]}}}),
    (MANIFEST, {"perturbation": [{"at_s": 1, "node": "node1"}]}),
    (MANIFEST, {"load": {"duration_s": 0}}),
    (GENESIS_FILE, {"chain_id": "Bad Chain"}),
])
def test_jsonschema_refuses_what_the_schema_refuses(schema, doc):
    with pytest.raises(ConfigError):
        schema.validate(doc, "f.toml")
    assert not jsonschema.Draft202012Validator(schema.json_schema()).is_valid(doc)

