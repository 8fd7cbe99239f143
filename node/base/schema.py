"""One way to validate a TOML file: a declared schema, then named domain checks.

Every TOML file metanode reads (the node config, the cage policy file, testnet
manifests, the genesis file) is declared here as a tree of :class:`Table`,
:class:`Key`, :class:`Array`, :class:`ArrayOfTables` and :class:`TableOf`:
each key's type, default (or that it is required), range, choices or pattern,
with unknown keys refused. :meth:`Schema.validate` walks a parsed document
against it, fills in defaults, then runs the schema's *checks*: small named
functions for what a schema cannot say (a multiaddr parses, two keys agree, a
policy does not contradict itself). Every failure, from the walk or a check,
is one :class:`~node.base.errors.ConfigError` (exit code 2) in one format::

    FILE: [table] key: expected WHAT, got FOUND
    FILE: [[array]] #N key: expected WHAT, got FOUND
    FILE: [table] unknown key 'k'; expected one of [...]
    FILE: [table] key is required (WHAT)

The key path is written the way the file spells it (``[policies.p.limits]
memory_mb``, ``[[perturbation]] #3 loss_pct``, ``validators[0]`` for a
top-level key), so the message says where to look.

Why not jsonschema, msgspec or fastjsonschema: importing jsonschema costs
~70 ms, msgspec ~10 ms and fastjsonschema ~7 ms plus ~50 ms to compile a
schema, against ~75 ms for the whole of ``metanode genesis show``; this module
imports nothing beyond the standard library and validates a node config in
well under a millisecond. Each schema can still be exported as JSON Schema
(:meth:`Schema.json_schema`), and the tests check that jsonschema agrees with
this walker on the shipped files and on bad ones.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Union

from node.base.errors import ConfigError


class _Marker:
    """A default that is not a value: REQUIRED or OPTIONAL."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


REQUIRED: Any = _Marker("REQUIRED")  # the key must be given
OPTIONAL: Any = _Marker("OPTIONAL")  # the key may be left out, and then stays out (the loader picks a default)

PathPart = Union[str, int]
KeyPath = tuple[PathPart, ...]


class Invalid(Exception):
    """A problem at a key path; :class:`Schema` renders it with the file name.

    Raised by the schema walk and by checks. ``problem`` usually reads
    ``expected ..., got ...`` (see :func:`expected`) and follows the path after
    ``": "``; ``joined=" "`` is for phrases that read on from the path
    (``unknown key ...``, ``is required ...``)."""

    def __init__(self, path: Sequence[PathPart], problem: str, *, joined: str = ": ") -> None:
        super().__init__(problem)
        self.path: KeyPath = tuple(path)
        self.problem = problem
        self.joined = joined


def expected(what: str, got: Any) -> str:
    """The one phrasing of a failed expectation: ``expected WHAT, got VALUE``."""
    return f"expected {what}, got {got!r}"


def found(value: Any) -> str:
    """A value with its type, for type errors: ``str 'fast'``, ``int 5``."""
    return f"{type(value).__name__} {value!r}"[:120]


# -- declarations ------------------------------------------------------------------------------------------------

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


class Key:
    """A scalar key. ``float`` means any number (an integer too); ``int`` refuses
    floats; neither takes true/false (TOML booleans are not numbers).

    (The declaration classes are plain slotted classes, not dataclasses: creating
    five dataclasses costs ~3 ms at import, which every CLI command reading a
    genesis file would pay.)"""

    __slots__ = ("type", "default", "doc", "ge", "gt", "le", "choices", "pattern", "expect", "unit")

    def __init__(self, type: type, default: Any = REQUIRED, doc: str = "", *, ge: float | None = None, gt: float | None = None,
                 le: float | None = None, choices: tuple[Any, ...] | None = None, pattern: str | None = None,
                 expect: str = "", unit: str = "") -> None:
        self.type = type
        self.default = default
        self.doc = doc
        self.ge, self.gt, self.le = ge, gt, le
        self.choices = choices
        self.pattern = pattern
        self.expect = expect  # what a value matching ``pattern`` is, in words
        self.unit = unit  # appended to the range: "0..1000 transactions per second"

    def accepts_type(self, value: Any) -> bool:
        if isinstance(value, bool):
            return self.type is bool
        if self.type is float:
            return isinstance(value, (int, float))
        return isinstance(value, self.type)

    def describe(self) -> str:
        """What the key holds, for "is required (...)"."""
        if self.choices is not None:
            return f"one of {list(self.choices)}"
        if self.expect:
            return self.expect
        text = _TYPE_NAMES.get(self.type, self.type.__name__)
        bounds = self.bounds()
        return f"{text}, {bounds}" if bounds else text

    def bounds(self) -> str:
        """The range in words: ``1..64``, ``more than 0 and at most 86400``, ``at least 0.1 seconds``."""
        low = self.ge if self.ge is not None else self.gt
        high = self.le
        if low is None and high is None:
            return ""
        if self.gt is not None and self.gt == 0 and high is None:
            text = "a positive integer" if self.type is int else "a positive number"
        elif self.ge is not None and high is not None:
            text = f"{_num(low)}..{_num(high)}"
        elif self.gt is not None and high is not None:
            text = f"more than {_num(low)} and at most {_num(high)}"
        elif low is not None:
            text = f"{'at least' if self.ge is not None else 'more than'} {_num(low)}"
        else:
            text = f"at most {_num(high)}"
        return f"{text} {self.unit}" if self.unit else text

    def in_bounds(self, value: Any) -> bool:
        # Written as "is inside" so that NaN (TOML has nan), for which every comparison is false, is outside.
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le))


class Array:
    """A list of scalars (``listen = ["/ip4/...", ...]``)."""

    __slots__ = ("item", "default", "doc", "min_items", "max_items", "unique", "noun")

    def __init__(self, item: Key, default: Any = REQUIRED, doc: str = "", *, min_items: int = 0, max_items: int | None = None,
                 unique: bool = False, noun: str = "item") -> None:
        self.item = item
        self.default = default
        self.doc = doc
        self.min_items, self.max_items = min_items, max_items
        self.unique = unique
        self.noun = noun  # one item, in words: "role", "public key"

    def describe(self) -> str:
        return f"a list of {_plural(self.noun)}"

    def count(self) -> str:
        if self.max_items is not None:
            return f"{self.min_items}..{self.max_items} {_plural(self.noun)}"
        return f"at least one {self.noun}" if self.min_items == 1 else f"at least {self.min_items} {_plural(self.noun)}"


class Table:
    """A table with declared keys; any other key is refused. A table that is
    left out is read as empty (its keys take their defaults) unless its default
    is REQUIRED (or OPTIONAL: then it stays out)."""

    __slots__ = ("keys", "default", "doc")

    def __init__(self, keys: dict[str, Node], default: Any = None, doc: str = "") -> None:
        self.keys = keys
        self.default = {} if default is None else default
        self.doc = doc

    def describe(self) -> str:
        return "a table"


class TableOf:
    """A table of named tables of one shape: ``[policies.<name>]``."""

    __slots__ = ("table", "default", "doc", "min_tables", "header")

    def __init__(self, table: Table, default: Any = None, doc: str = "", *, min_tables: int = 0, header: str = "<name>") -> None:
        self.table = table
        self.default = {} if default is None else default
        self.doc = doc
        self.min_tables = min_tables
        self.header = header  # how the tables are written, for messages: "policies.<name>"

    def describe(self) -> str:
        return f"[{self.header}] tables"


class ArrayOfTables:
    """An array of tables: ``[[perturbation]]``; items are numbered from 1 in messages."""

    __slots__ = ("table", "default", "doc")

    def __init__(self, table: Table, default: Any = None, doc: str = "") -> None:
        self.table = table
        self.default = [] if default is None else default
        self.doc = doc

    def describe(self) -> str:
        return "an array of tables"


Node = Union[Key, Array, Table, TableOf, ArrayOfTables]
# A domain check: raises Invalid. Schema.validate passes it the validated document (defaults filled in);
# a loader may run more checks on what it built from that (Schema.check), e.g. ones that read files.
Check = Callable[[Any], None]


# -- validation --------------------------------------------------------------------------------------------------

class Schema:
    """A TOML file's declared shape plus its domain checks, run in order."""

    def __init__(self, root: Table, checks: Sequence[Check] = ()) -> None:
        self.root = root
        self.checks = tuple(checks)

    def validate(self, doc: Any, source: str) -> dict[str, Any]:
        """The document with defaults filled in (a new dict; ``doc`` is not
        changed), or ConfigError naming ``source``, the key and the problem."""
        try:
            values = _table(self.root, doc, (), top=True)
        except Invalid as problem:
            raise self.error(source, problem) from None
        self.check(values, source, self.checks)
        return values

    def check(self, subject: Any, source: str, checks: Sequence[Check]) -> None:
        """Run ``checks`` on ``subject`` (the validated values, or what a loader
        built from them), rendering their Invalid as ConfigError."""
        for check in checks:
            try:
                check(subject)
            except Invalid as problem:
                raise self.error(source, problem) from None

    def error(self, source: str, problem: Invalid) -> ConfigError:
        where = self.where(problem.path)
        return ConfigError(f"{source}: {where}{problem.joined}{problem.problem}" if where else f"{source}: {problem.problem}")

    def where(self, path: Sequence[PathPart]) -> str:
        """A key path as the file spells it: ``[network] listen[0]``, ``[[perturbation]] #2 node``."""
        node: Node | None = self.root
        header: list[str] = []
        in_array = False
        item: int | None = None
        key = ""
        for part in path:
            if isinstance(part, int):
                if isinstance(node, ArrayOfTables) and not key:
                    item, node = part, node.table
                else:
                    key += f"[{part}]"
                    node = node.item if isinstance(node, Array) else None
                continue
            child: Node | None = None
            if isinstance(node, Table):
                child = node.keys.get(part)
            elif isinstance(node, TableOf):
                child = node.table
            if not key and isinstance(child, (Table, TableOf, ArrayOfTables)):
                header.append(_toml_key(part))
                in_array, item = isinstance(child, ArrayOfTables), None
            else:
                key = f"{key}.{_toml_key(part)}" if key else _toml_key(part)
            node = child
        text = ""
        if header:
            dotted = ".".join(header)
            text = f"[[{dotted}]]" if in_array else f"[{dotted}]"
            if in_array and item is not None:
                text += f" #{item + 1}"
        return f"{text} {key}" if text and key else text or key

    def json_schema(self) -> dict[str, Any]:
        """The same declaration as a JSON Schema (draft 2020-12), for editors and
        as a cross-check against the jsonschema library. The domain checks have no
        JSON Schema form and are not in it."""
        return {"$schema": "https://json-schema.org/draft/2020-12/schema", **_json(self.root)}


def _table(spec: Table, value: Any, path: KeyPath, *, top: bool = False) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Invalid(path, f"expected a table, got {found(value)}")
    for key, item in value.items():
        if key not in spec.keys:
            known = sorted(spec.keys)
            if top:
                what = f"section [{_toml_key(key)}]" if isinstance(item, dict) else f"key {key!r}"
                raise Invalid(path, f"unknown {what}; expected one of {known}")
            raise Invalid(path, f"unknown key {key!r}; expected one of {known}", joined=" ")
    out: dict[str, Any] = {}
    for key, node in spec.keys.items():
        here = (*path, key)
        if key in value:
            out[key] = _node(node, value[key], here)
        elif node.default is REQUIRED:
            raise Invalid(here, f"is required ({node.doc or node.describe()})", joined=" ")
        elif node.default is not OPTIONAL:
            out[key] = _node(node, _copy(node.default), here)
    return out


def _node(node: Node, value: Any, path: KeyPath) -> Any:
    if isinstance(node, Key):
        return _key(node, value, path)
    if isinstance(node, Table):
        return _table(node, value, path)
    if isinstance(node, Array):
        return _array(node, value, path)
    if isinstance(node, TableOf):
        if not isinstance(value, dict):
            raise Invalid(path, f"expected a table of {node.describe()}, got {found(value)}")
        if len(value) < node.min_tables:
            raise Invalid(path, f"expected at least {node.min_tables} [{node.header}] table(s), got {len(value)}")
        return {name: _table(node.table, table, (*path, name)) for name, table in value.items()}
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise Invalid(path, f"expected an array of tables, got {found(value)}")
    return [_table(node.table, item, (*path, i)) for i, item in enumerate(value)]


def _key(spec: Key, value: Any, path: KeyPath) -> Any:
    if not spec.accepts_type(value):
        raise Invalid(path, f"expected {_TYPE_NAMES.get(spec.type, spec.type.__name__)}, got {found(value)}")
    if spec.choices is not None and value not in spec.choices:
        raise Invalid(path, expected(f"one of {list(spec.choices)}", value))
    if spec.pattern is not None and not re.fullmatch(spec.pattern, value):
        raise Invalid(path, expected(spec.expect or f"a string matching {spec.pattern}", value))
    if not spec.in_bounds(value):
        raise Invalid(path, expected(spec.bounds(), value))
    return value


def _array(spec: Array, value: Any, path: KeyPath) -> list[Any]:
    if not isinstance(value, list):
        raise Invalid(path, f"expected {spec.describe()}, got {found(value)}")
    if len(value) < spec.min_items or (spec.max_items is not None and len(value) > spec.max_items):
        raise Invalid(path, f"expected {spec.count()}, got {len(value)}")
    items = [_key(spec.item, item, (*path, i)) for i, item in enumerate(value)]
    if spec.unique:
        seen: set[Any] = set()
        for item in items:
            if item in seen:
                raise Invalid(path, f"expected distinct {_plural(spec.noun)}, got {item!r} twice")
            seen.add(item)
    return items


def _json(node: Node) -> dict[str, Any]:
    if isinstance(node, Key):
        out: dict[str, Any] = {"type": {int: "integer", float: "number", str: "string", bool: "boolean"}[node.type]}
        for ours, theirs in (("ge", "minimum"), ("gt", "exclusiveMinimum"), ("le", "maximum")):
            if getattr(node, ours) is not None:
                out[theirs] = getattr(node, ours)
        if node.choices is not None:
            out["enum"] = list(node.choices)
        if node.pattern is not None:
            out["pattern"] = f"^(?:{node.pattern})$"
    elif isinstance(node, Array):
        out = {"type": "array", "items": _json(node.item), "minItems": node.min_items}
        if node.max_items is not None:
            out["maxItems"] = node.max_items
        if node.unique:
            out["uniqueItems"] = True
    elif isinstance(node, Table):
        out = {"type": "object", "properties": {k: _json(v) for k, v in node.keys.items()}, "additionalProperties": False}
        required = [k for k, v in node.keys.items() if v.default is REQUIRED]
        if required:
            out["required"] = required
    elif isinstance(node, TableOf):
        out = {"type": "object", "additionalProperties": _json(node.table), "minProperties": node.min_tables}
    else:
        out = {"type": "array", "items": _json(node.table)}
    if node.doc:
        out["description"] = node.doc
    if node.default is not REQUIRED and node.default is not OPTIONAL:
        out["default"] = _copy(node.default)
    return out


# -- reading files -----------------------------------------------------------------------------------------------

def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """Read and parse a TOML file; ``what`` names it in errors ("genesis file")."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: {what} is not UTF-8 text") from None
    return parse_toml(text, str(path))


def parse_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None


# -- helpers -----------------------------------------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_key(name: PathPart) -> str:
    text = str(name)
    return text if _BARE_KEY.fullmatch(text) else '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _num(value: float | None) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _plural(noun: str) -> str:
    return noun[:-1] + "ies" if re.search(r"[^aeiou]y$", noun) else noun + "s"


def _copy(value: Any) -> Any:
    """Defaults are shared declarations: hand out copies of mutable ones."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value
