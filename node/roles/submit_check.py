"""What the gateway checks in a job before it goes on chain.

The chain takes any ``job.submit`` whose payload follows its job type's
schema (node/app/jobtypes.py): whether its SQL parses, reads only its inputs
or names columns those inputs have is found out by the processing nodes,
seconds later, after the job is on chain for good. The gateway knows enough
to answer most of that at once, so it does, before the transaction reaches
the mempool (nothing goes on chain and no ``api.call`` receipt is issued for
a refused call, as for the gateway's other refusals):

1. **The cage's SQL gate** (node/cage/sqlgate.py), for a job type that runs
   SQL: one SELECT that DuckDB parses, reading only the job's inputs by name,
   no clock, no file or URL. Checked on the gateway's own in-memory DuckDB
   connection (parsing only: nothing is read or run). Random functions are
   allowed here (``seeded=True``): the policy, not the gateway, decides them.
2. **Binding against the inputs' schemas**, when this node's storage catalog
   holds every input of the job for this tenant (a gateway keeps a store, and
   the uploads it took are catalogued there): the SELECT is bound, not run,
   against empty tables of those schemas, and refused when it names a column,
   table or function that does not exist, or selects a column outside its
   GROUP BY. Other binder errors (type mismatches) are left to the
   processing nodes: the catalog's types come from a sample of the file and
   the cage sniffs its own. When a schema is not here, this step is skipped
   and the processing nodes report such errors as before.
3. **Column parameters** of a function job type (``JobType.column_params``:
   trend-analysis's ``time_column``, ``value_column``, ``group_by``) must name
   columns of the input's schema, when the catalog holds it.

Bounded cost: the SQL text is at most the chain's ``max_query_bytes`` in
force at the next height (the gateway parses the payload under the rules the
chain state applies to the next block, ``StateMachine.rules_at``; a vote may
raise the rule up to 65536 bytes, the largest transaction); parsing is
linear in it. Binding can evaluate constant expressions
(``repeat('x', 2000000000)`` is folded while binding, and neither DuckDB's
memory limit nor an interrupt stops it), so a query with a function call
over constants alone (other than arithmetic, interval and list literals, and
aggregates) or a lambda is not bound: it is still gated, and the processing
nodes, inside their cage limits, report what binding would have found.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import duckdb
import structlog

from node.app.jobtypes import job_type
from node.app.payloads import JobSubmit
from node.base.errors import ErrorCode
from node.cage.functions import quote_identifier
from node.cage.sqlgate import SqlRefused, gate_sql, walk_tree
from node.cage.worker import wrap_select
from node.p2p.jsonrpc import RpcError

log = structlog.get_logger("metanode.gateway")

Schema = list[dict[str, Any]]
SchemaLookup = Callable[[bytes, bytes], "Schema | None"]
"""(tenant, dataset digest) -> the dataset's column schema ``[{name, type, ...}]``
in file order, or None when this node does not hold it for that tenant."""

# Functions that cost little when folded over constants: arithmetic (on bounded
# literals), the interval builders of ``INTERVAL n DAY``, list and struct
# literals; and aggregates, which binding never evaluates.
CHEAP_ON_CONSTANTS = frozenset({
    "+", "-", "*", "/", "//", "%", "trunc", "list_value", "row", "struct_pack",
    "to_years", "to_months", "to_weeks", "to_days", "to_hours", "to_minutes", "to_seconds",
    "to_milliseconds", "to_microseconds",
    "count", "count_star", "sum", "avg", "min", "max",
})
# Binder errors that mean the query cannot run on any file of these columns.
_REFUSED_BINDING = re.compile(
    r"Referenced column .* not found|does not have a column named|Referenced table .* not found"
    r"|Table with name .* does not exist|Function with name .* does not exist"
    r"|must appear in the GROUP BY clause")
_CONNECTION_CONFIG: dict[str, str | int | float | list[str]] = {
    "threads": 1, "autoinstall_known_extensions": False, "autoload_known_extensions": False,
    "enable_external_access": False, "memory_limit": "256MB",
}


def catalog_schemas(storage: Callable[[], Any]) -> SchemaLookup:
    """A :data:`SchemaLookup` over this node's storage catalog. ``storage``
    returns the node's StorageService (node/roles/storage/), or None: it is
    called at each lookup because the storage role is built after the gateway."""

    def lookup(tenant: bytes, digest: bytes) -> Schema | None:
        service = storage()
        if service is None:
            return None
        try:
            info = service.catalog.get(tenant, digest)
        except duckdb.Error as exc:  # the node's own database failed: check without the schema
            log.warning("schema lookup failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return None
        return list(info.schema) if info is not None and info.schema else None

    return lookup


class SubmitChecks:
    """The gateway's checks of one ``job.submit`` (see the module docstring);
    :meth:`check` raises RpcError with SQL_REFUSED or JOB_PARAMS_REFUSED."""

    def __init__(self, schemas: SchemaLookup | None = None) -> None:
        self.schemas = schemas
        self._con: duckdb.DuckDBPyConnection | None = None

    def connection(self) -> duckdb.DuckDBPyConnection:
        """The in-memory DuckDB the checks parse and bind on: no files, no
        extensions, its settings locked. Opened once (opening costs ~30 ms)."""
        if self._con is None:
            con = duckdb.connect(":memory:", config=dict(_CONNECTION_CONFIG))
            con.execute("SET lock_configuration = true")
            self._con = con
        return self._con

    def known_schemas(self, job: JobSubmit, tenant: bytes) -> dict[str, Schema]:
        """The schema of each input of ``job`` this node holds for ``tenant``
        (by input name; an input not held here is left out). Reads the node's
        catalog: call it on the thread that owns the node's database."""
        found = {}
        for name, digest in job.inputs.items():
            schema = self.schemas(tenant, digest) if self.schemas is not None else None
            if schema is not None:
                found[name] = schema
        return found

    def check(self, job: JobSubmit, schemas: Mapping[str, Schema]) -> None:
        """Refuse ``job`` (a parsed payload the chain state accepts) if it
        would fail on the processing nodes for a reason visible here, given
        the ``schemas`` of its inputs known here (:meth:`known_schemas`).
        Uses only this object's own DuckDB connection: may run in a worker
        thread, one call at a time."""
        entry = job_type(job.job_type)
        if entry.sql_param is not None:
            self.check_sql(job.params[entry.sql_param], job.inputs, schemas)
        elif entry.column_params and entry.input_param is not None:
            self.check_columns(job, schemas, entry.input_param, entry.column_params)

    def check_sql(self, sql: str, inputs: Mapping[str, bytes], schemas: Mapping[str, Schema]) -> None:
        con = self.connection()
        try:
            tree = gate_sql(con, sql, inputs=set(inputs), seeded=True)
        except SqlRefused as exc:
            raise RpcError(ErrorCode.SQL_REFUSED, f"the query is refused: {exc}", {"reason": str(exc)}) from None
        if set(schemas) != set(inputs) or not binding_is_bounded(tree):
            return  # an input's schema is not here, or binding could be costly: the gate alone
        problem = binding_problem(con, sql, schemas)
        if problem is not None:
            raise RpcError(ErrorCode.SQL_REFUSED, f"the query is refused: {problem}",
                           {"reason": problem, "bound_against": sorted(schemas)})

    def check_columns(self, job: JobSubmit, schemas: Mapping[str, Schema], input_param: str,
                      column_params: tuple[str, ...]) -> None:
        input_name = job.params[input_param]
        schema = schemas.get(input_name)
        if schema is None:
            return
        columns = [str(c["name"]) for c in schema]
        for param in column_params:
            name = job.params.get(param)
            if name is not None and name not in columns:
                reason = f"params.{param}: no column {name!r:.80} in input {input_name} (columns: {', '.join(columns)})"
                raise RpcError(ErrorCode.JOB_PARAMS_REFUSED, f"the job is refused: {reason}",
                               {"reason": reason, "param": param})


def _reading_data(tree: Any) -> dict[int, bool]:
    """For each dict and list under ``tree`` (by id): whether the expression
    under it refers to a column or a subquery, so binding cannot fold it (it
    has no value before the query runs). One pass, no recursion (parse trees
    are as deep as DuckDB's expression depth allows)."""
    flags: dict[int, bool] = {}
    stack: list[tuple[Any, list[Any] | None]] = [(tree, None)]
    while stack:
        item, containers = stack.pop()
        if containers is None:  # first visit: its containers first, then itself again
            values = item.values() if isinstance(item, dict) else item
            containers = [v for v in values if isinstance(v, (dict, list))]
            stack.append((item, containers))
            stack.extend((child, None) for child in containers)
            continue
        own = isinstance(item, dict) and item.get("class") in ("COLUMN_REF", "SUBQUERY", "STAR")
        flags[id(item)] = own or any(flags[id(child)] for child in containers)
    return flags


def binding_is_bounded(tree: dict[str, Any]) -> bool:
    """True if binding the statement of ``tree`` (DuckDB's parse tree) folds
    no costly constant expression: no lambda, and every function call over
    constants alone is one of :data:`CHEAP_ON_CONSTANTS`. A FROM-clause
    table function is exempt (binding does not run it); its arguments are not."""
    nodes = list(walk_tree(tree))
    reads_data = _reading_data(tree)
    table_functions = {id(n["function"]) for n in nodes
                       if n.get("type") == "TABLE_FUNCTION" and isinstance(n.get("function"), dict)}
    for node in nodes:
        if node.get("class") == "LAMBDA":
            return False
        if node.get("class") != "FUNCTION" or id(node) in table_functions:
            continue
        name = str(node.get("function_name", "")).lower()
        has_arguments = bool(node.get("arguments") or node.get("children"))  # "children" in older DuckDB
        if name not in CHEAP_ON_CONSTANTS and has_arguments and not reads_data[id(node)]:
            return False
    return True


def _describe(exc: duckdb.Error) -> str:
    """DuckDB's message without its kind prefix and the query excerpt (which
    would show the gateway's wrapping): the lines before the first blank one."""
    head = str(exc).strip().split("\n\n", 1)[0]
    text = " ".join(line.strip() for line in head.splitlines() if line.strip())
    return re.sub(r"^[A-Za-z ]+ Error: ", "", text)


def _create_sql(name: str, schema: Schema) -> str | None:
    """CREATE TABLE for an empty table of ``schema``, or None when a type is not
    one DuckDB parses (each type is re-rendered by DuckDB's own type parser)."""
    try:
        columns = [f"{quote_identifier(str(c['name']))} {duckdb.sqltype(str(c['type']))}" for c in schema]
    except (duckdb.Error, KeyError, TypeError):
        return None
    return f"CREATE TABLE {quote_identifier(name)} ({', '.join(columns)})" if columns else None


def binding_problem(con: duckdb.DuckDBPyConnection, sql: str, schemas: Mapping[str, Schema]) -> str | None:
    """Bind (not run) the SELECT ``sql`` as the cage runs it, against empty
    tables of ``schemas`` (input name -> schema), in a transaction rolled back
    after; the binder's reason when it names something that does not exist,
    else None (also when a schema cannot be made into a table here)."""
    con.execute("BEGIN TRANSACTION")
    try:
        for name, schema in schemas.items():
            create = _create_sql(name, schema)
            if create is None:
                return None
            try:
                con.execute(create)
            except duckdb.Error:
                return None  # a schema DuckDB cannot make a table of (duplicate names...): not checked
        try:
            con.sql(wrap_select(sql))  # binds the statement; a relation runs only when fetched
        except duckdb.Error as exc:
            reason = _describe(exc)
            return reason if _REFUSED_BINDING.search(reason) else None
        return None
    finally:
        con.execute("ROLLBACK")
