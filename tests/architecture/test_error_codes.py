"""The one table of error codes (node/base/errors.py): complete, consistent, and the only place a code is spelled.

``test_no_error_code_literal_outside_the_table`` walks the AST of every module of ``node/``
except the table and fails on an integer literal (``-32602`` is a ``UnaryOp`` around a constant,
and counts) whose value is a code in the table **where a code goes**:

* an argument of a call to an exception class (a callable named ``...Error``: ``RpcError(1404, ...)``,
  ``HttpError(...)``) and any ``code=`` keyword argument;
* an operand of a comparison whose other side is about a code (a name or attribute containing
  ``code``, or a ``["code"]`` / ``.get("code")`` lookup): ``exc.code != 1404``, ``code in (1404, 1206)``;
* a key or value of a dict literal (the ``{reason: 1101}`` and ``{1001: 400}`` maps), and the
  default of a lookup in a code map or of a code (``CODES.get(reason, 1100)``, ``error.get("code", -32603)``);
* the value assigned to a name or attribute called ``code`` or ``..._code`` (``code, wire = 1212, "x"``).

A name bound to such a literal at module or class level anywhere in ``node/`` (``NOT_FOUND = 1404``)
counts as the literal wherever it is used in one of those places, directly or through
``from ... import`` (``exc.code == NOT_SEALED``): the duplicate definition is reported where it is made.

Why positions rather than every integer equal to a code, with an allow-list: the codes sit among
ordinary numbers (1000 ms, 1024 bytes, a 1200 s timeout, a 1010-row page) and such a number would
need an entry that says nothing about codes. The positions above are where every code in ``node/``
has ever been written; a number elsewhere is a number, and a constant that merely equals a code
(``MAX_ROWS = 1200``) is reported only once it is used as one.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from node.base.errors import (
    EXIT_RUNTIME,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    SUBMIT_REJECTED_STATUS,
    TX_REJECTED,
    ErrorCode,
    error_code,
    exit_code_of,
    http_status_of,
)
from node.consensus.tx import TxErrorCode

ROOT = Path(__file__).resolve().parents[2]
NODE = ROOT / "node"
TABLE = NODE / "base" / "errors.py"
CODES = {int(code) for code in ErrorCode}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def int_value(node: ast.AST) -> int | None:
    """The value of an integer literal (``-5`` included), else None. Booleans are not integers here."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = int_value(node.operand)
        return None if inner is None else (-inner if isinstance(node.op, ast.USub) else inner)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    return None


def targets_and_values(node: ast.AST) -> Iterator[tuple[ast.expr, ast.expr]]:
    """(target, value) pairs of an assignment, element by element for ``a, b = 1, 2``."""
    if isinstance(node, ast.Assign):
        pairs: list[tuple[ast.expr, ast.expr]] = [(t, node.value) for t in node.targets]
    elif isinstance(node, ast.AnnAssign) and node.value is not None:
        pairs = [(node.target, node.value)]
    else:
        return
    for target, value in pairs:
        if isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, (ast.Tuple, ast.List)) \
                and len(target.elts) == len(value.elts):
            yield from zip(target.elts, value.elts)
        else:
            yield target, value


def bound_name(target: ast.AST) -> str | None:
    if isinstance(target, ast.Name):
        return target.id
    if isinstance(target, ast.Attribute):
        return target.attr
    return None


class Module:
    """One parsed module, with the names it binds to a code-valued literal at module or class level."""

    def __init__(self, rel: str, name: str, source: str, *, is_package: bool = False) -> None:
        self.rel, self.name, self.is_package = rel, name, is_package
        self.tree = ast.parse(source, rel)
        self.constants: dict[str, tuple[int, int]] = {}  # name -> (value, line)
        scopes: list[ast.Module | ast.ClassDef] = [self.tree]
        scopes += [n for n in ast.walk(self.tree) if isinstance(n, ast.ClassDef)]
        for scope in scopes:
            for statement in scope.body:
                for target, value in targets_and_values(statement):
                    number = int_value(value)
                    if isinstance(target, ast.Name) and number is not None and number in CODES:
                        self.constants[target.id] = (number, statement.lineno)

    @classmethod
    def of(cls, path: Path) -> Module:
        return cls(path.relative_to(ROOT).as_posix(), module_name(path), path.read_text(), is_package=path.name == "__init__.py")


def load_modules() -> dict[str, Module]:
    return {m.name: m for m in (Module.of(p) for p in sorted(NODE.rglob("*.py")) if p != TABLE)}


def imported_names(module: Module, modules: dict[str, Module]) -> tuple[dict[str, tuple[Module, str]], dict[str, Module]]:
    """``from node.x import NAME [as n]`` -> n: (module x, NAME); ``import node.x as m`` /
    ``from node import x`` -> m: module x (for ``m.NAME``)."""
    names: dict[str, tuple[Module, str]] = {}
    aliases: dict[str, Module] = {}
    package = module.name if module.is_package else module.name.rpartition(".")[0]
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in modules:
                    aliases[alias.asname] = modules[alias.name]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                local = alias.asname or alias.name
                if f"{source}.{alias.name}" in modules:
                    aliases[local] = modules[f"{source}.{alias.name}"]
                elif source in modules:
                    names[local] = (modules[source], alias.name)
    return names, aliases


def mentions_code(node: ast.AST) -> bool:
    """Is this expression about an error code: ``code``, ``exc.code``, ``error["code"]``, ``error.get("code")``?"""
    if isinstance(node, ast.Name):
        return "code" in node.id.lower()
    if isinstance(node, ast.Attribute):
        return "code" in node.attr.lower()
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "code"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
        return bool(node.args) and isinstance(node.args[0], ast.Constant) and node.args[0].value == "code"
    return False


def _is_code_key(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value == "code"


def callee_name(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def code_positions(tree: ast.AST) -> Iterator[ast.expr]:
    """Every expression in a place where an error code goes (see the module docstring)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if callee_name(node).endswith("Error"):
                yield from node.args
                yield from (k.value for k in node.keywords)
            else:
                yield from (k.value for k in node.keywords if k.arg == "code")
                if isinstance(node.func, ast.Attribute) and node.func.attr == "get" and len(node.args) == 2 \
                        and (mentions_code(node.func.value) or mentions_code(node.args[0]) or _is_code_key(node.args[0])):
                    yield node.args[1]  # the default of a lookup in a code map, or of error.get("code", ...)
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(mentions_code(o) for o in operands):
                for operand in operands:
                    if isinstance(operand, (ast.Tuple, ast.List, ast.Set)):
                        yield from operand.elts
                    else:
                        yield operand
        elif isinstance(node, ast.Dict):
            yield from (k for k in node.keys if k is not None)
            yield from node.values
        else:
            for target, value in targets_and_values(node):
                name = bound_name(target)
                if name is not None and (name.lower() == "code" or name.lower().endswith("_code")):
                    yield value


def code_literals(modules: dict[str, Module]) -> list[tuple[str, int, int]]:
    """(file, line, code) of each code spelled in a code position, or bound to a name used in one."""
    found: set[tuple[str, int, int]] = set()
    for module in modules.values():
        names, aliases = imported_names(module, modules)
        for expr in code_positions(module.tree):
            number = int_value(expr)
            if number is not None and number in CODES:
                found.add((module.rel, expr.lineno, number))
                continue
            # A name bound to a code literal, here or in the module it is imported from.
            where: tuple[Module, str] | None = None
            if isinstance(expr, ast.Name):
                where = (module, expr.id) if expr.id in module.constants else names.get(expr.id)
            elif isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name) and expr.value.id in aliases:
                where = (aliases[expr.value.id], expr.attr)
            if where is not None and where[1] in where[0].constants:
                number, line = where[0].constants[where[1]]
                found.add((where[0].rel, line, number))
    return sorted(found)


def test_no_error_code_literal_outside_the_table() -> None:
    found = code_literals(load_modules())
    assert not found, ("error codes spelled outside node/base/errors.py; use ErrorCode.<NAME>:\n  "
                       + "\n  ".join(f"{rel}:{line}: {number} is ErrorCode.{getattr(error_code(number), 'name', '?')}" for rel, line, number in found))


def test_the_check_sees_each_kind_of_code_position() -> None:
    """The AST walk finds what it is meant to find (and leaves ordinary numbers alone)."""
    source = '''
NOT_SEALED = 1102
MAX_ROWS = 1200
TIMEOUT_MS = 1001
def f(exc, error):
    raise RpcError(-32602, "Invalid params")
    HttpError(1501, "too large", status=413)
    call(code=1404)
    if exc.code != 1213 or error.get("code") in (1405, 1206) or exc.code == NOT_SEALED:
        pass
    STATUS = {1001: 400, "x": 1101}
    QUERY_CODES.get(exc.code, 1100), error.get("code", -32603), limits.get("rows", 1203)
    sleep(TIMEOUT_MS / 1000, 1024, retries=1010)
    rows = MAX_ROWS
class E(Exception):
    code, wire = 1212, "not_found"
'''
    probe = Module("node/probe.py", "node.probe", source)
    found = sorted(number for _, _, number in code_literals({probe.name: probe}))
    assert found == sorted([1102, -32602, 1501, 1404, 1213, 1405, 1206, 1001, 1101, 1100, -32603, 1212])


def test_every_code_is_unique_and_complete() -> None:
    members = list(ErrorCode)
    assert len(ErrorCode.__members__) == len(members), "an entry is an alias of another (same number)"
    assert len({int(c) for c in members}) == len(members)
    statuses = {400, 401, 403, 404, 409, 413, 429, 500, 503, 504}
    for code in members:
        assert isinstance(code.http_status, int) and code.http_status in statuses, code
        assert code.exit_code in (EXIT_RUNTIME, EXIT_USAGE, EXIT_UNREACHABLE), code  # a failure never exits 0
        assert code.meaning and "\n" not in code.meaning, code
        assert -32768 <= code <= -32000 or code > 0, f"{code.name}: outside JSON-RPC's reserved and application ranges"
        assert error_code(int(code)) is code and exit_code_of(int(code)) == code.exit_code
    assert error_code(4242) is None and error_code(None) is None and error_code(True) is None
    assert exit_code_of(4242) == EXIT_RUNTIME


def test_every_mempool_rejection_has_a_code() -> None:
    assert set(TX_REJECTED) == {reason.value for reason in TxErrorCode}
    assert set(SUBMIT_REJECTED_STATUS) <= set(TX_REJECTED)


def test_the_http_gateway_answers_each_code_with_the_tables_status() -> None:
    from node.roles.http_gateway import _REASONS, HttpError

    for code in ErrorCode:
        error = HttpError.from_rpc({"code": int(code), "message": "m"})
        assert (error.status, error.code) == (code.http_status, int(code)), code
        assert error.status in _REASONS, f"{code.name}: no reason phrase for HTTP {error.status}"
        assert HttpError(code, "m").status == code.http_status
    assert HttpError.from_rpc({"code": 4242, "message": "m"}).status == 500
    assert HttpError.from_rpc({"message": "m"}).status == 500
    # One code, cases HTTP tells apart: a refused transaction by the mempool's reason...
    rejected = {"bad_nonce": 409, "duplicate": 409, "sender_limit": 429, "mempool_full": 503, "too_large": 400, "malformed": 400}
    for reason, status in rejected.items():
        data = {"reason": reason, "detail": "d"}
        assert HttpError.from_rpc({"code": int(ErrorCode.SUBMIT_REJECTED), "message": "m", "data": data}).status == status
        assert http_status_of(ErrorCode.SUBMIT_REJECTED, data) == status
    # ...and a transaction signed by another key.
    assert HttpError.from_rpc({"code": int(ErrorCode.WRONG_TX), "message": "m", "data": {"signed_by_caller": False}}).status == 403
    assert HttpError.from_rpc({"code": int(ErrorCode.WRONG_TX), "message": "m", "data": {"type": "noop"}}).status == 400


def test_the_readme_lists_every_status_the_gateway_answers() -> None:
    """The README's HTTP gateway section names the statuses; it stays true as the table changes."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index('{"error": {"code", "message", "data"}}')
    section = readme[start: readme.index("\n\n", start)]
    statuses = {code.http_status for code in ErrorCode} | {405}  # 405: a known route, another method
    missing = sorted(s for s in statuses if str(s) not in section)
    assert not missing, f"README's HTTP gateway section does not mention {missing}"
