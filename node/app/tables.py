"""The chain state's DuckDB tables (all prefixed ``state_``) and a canonical dump.

=====================  =======================================================
table                  one row per
=====================  =======================================================
``state_meta``         key (schema version, rules digest)
``state_height``       the single applied head: height, block hash, time
``state_nodes``        registered node: roles, capacity, delivered/missed/
                       declined counts, height of its last missed deadline
                       (or of its last decline for a local fault)
``state_datasets``     registration (tenant, name, version): digest, size,
                       format, height and tx. Versions of one name count
                       1, 2, 3... per tenant; one digest may appear under
                       several names (and several versions of one name)
``state_jobs``         job: tenant, type, inputs and params (CBOR), r,
                       deadline_blocks, state, reason, attempt, and the
                       scheduling block, seed and clock once scheduled; for
                       a service run its service id and run number (NULL for
                       a plain job), and the policy name it runs under
``state_assignments``  (job, node): attempt, assigned height, deadline,
                       status pending | delivered | missed | declined |
                       cancelled, the note of a declined one (or of one
                       missed for want of an acknowledgement), the height
                       of its acknowledgement (job.ack, or its result or
                       decline) and the height by which one is due (NULL
                       when the rule ack_blocks was 0 at assignment)
``state_results``      (job, node): the committed result: receipt id, result
                       and witness digests, exit status, the error the node
                       reported when the job failed
``state_receipts``     receipt that entered the chain: height and position
                       (the receipt log's order), kind, issuer, envelope
``state_rejections``   (height, index): a committed tx the state refused, why
``state_proposals``    governance proposal (its gov.propose tx hash): proposer,
                       action kind and CBOR, height, expiry height, status
                       pending | executed | expired, height it closed
``state_votes``        (proposal, validator): the height and tx of the vote
``state_members``      (kind node | tenant, key): admitted or removed by an
                       executed proposal, at which height (keys without a
                       row keep their genesis admission)
``state_validator_     height from which a validator set decides blocks:
sets``                 keys (CBOR sorted list), the height of the block that
                       executed the change and its proposal (no row for the
                       genesis set; two changes executed in one block leave
                       one row, the later change built on the earlier)
``state_rule_          (height from which a chain rule changes, rule name):
changes``              the new value, the proposal and the height of the
                       block that executed it (node/app/rule_changes.py; the
                       genesis rules have no row)
``state_services``     service (node/app/services.py): tenant, name (unique
                       per tenant), job template (type, inputs by dataset
                       name, params, policy), replicas, trigger, deadline,
                       state active | stopped, run count, the last run's
                       resolved inputs, the latest verified run
``state_service_       (service, slot): the processing node placed there and
placements``           the height it was placed
``state_decisions``    scheduler decision (node/app/decisions.py) by id: kind,
                       subject, the height of the block that implied it, its
                       kind fields (canonical CBOR: a scheduler node signs
                       them from here), and the id of the receipt that
                       attested it (NULL: none yet)
=====================  =======================================================

Keys and digests are BLOBs; heights BIGINT. ``dump_state`` reads every table
in primary-key order and encodes it as deterministic CBOR: two nodes that
applied the same blocks produce the same bytes.
"""

from __future__ import annotations

from typing import Any

import duckdb

from node.base.codec import encode

# 2: state_results.error; 3: declines (state_nodes.declined, state_assignments.note);
# 4: dataset versions (state_datasets keyed by tenant, name, version); 5: governance
# (state_proposals, state_votes, state_members); 6: validator set changes (state_validator_sets);
# 7: rule changes by vote (state_rule_changes; rules applied per height); 8: services
# (state_services, state_service_placements; state_jobs.service_id, run, policy); 9: assignment
# acknowledgements (state_assignments.acked_height, ack_deadline); 10: scheduler decisions and
# their attestations (state_decisions); 11: the rule attest_once (the rules digest moved)
SCHEMA_VERSION = 11

# (table, primary key columns in dump order, DDL)
TABLES: tuple[tuple[str, str, str], ...] = (
    ("state_meta", "key", """CREATE TABLE IF NOT EXISTS state_meta (
        key VARCHAR PRIMARY KEY, value BLOB NOT NULL)"""),
    ("state_height", "id", """CREATE TABLE IF NOT EXISTS state_height (
        id INTEGER PRIMARY KEY CHECK (id = 0), height BIGINT NOT NULL,
        block_hash BLOB NOT NULL, timestamp_ms BIGINT NOT NULL)"""),
    ("state_nodes", "node_key", """CREATE TABLE IF NOT EXISTS state_nodes (
        node_key BLOB PRIMARY KEY, peer_id VARCHAR NOT NULL, moniker VARCHAR NOT NULL,
        roles VARCHAR NOT NULL, capacity INTEGER NOT NULL,
        registered_height BIGINT NOT NULL, updated_height BIGINT NOT NULL,
        delivered INTEGER NOT NULL, missed INTEGER NOT NULL, last_missed_height BIGINT,
        declined INTEGER NOT NULL)"""),
    ("state_datasets", "tenant, name, version", """CREATE TABLE IF NOT EXISTS state_datasets (
        tenant BLOB NOT NULL, name VARCHAR NOT NULL, version INTEGER NOT NULL, digest BLOB NOT NULL,
        size BIGINT NOT NULL, format VARCHAR NOT NULL, height BIGINT NOT NULL, tx_hash BLOB NOT NULL,
        PRIMARY KEY (tenant, name, version))"""),
    ("state_jobs", "job_id", """CREATE TABLE IF NOT EXISTS state_jobs (
        job_id BLOB PRIMARY KEY, seq BIGINT NOT NULL UNIQUE, tenant BLOB NOT NULL,
        type VARCHAR NOT NULL, inputs BLOB NOT NULL, params BLOB NOT NULL,
        replication INTEGER NOT NULL, deadline_blocks INTEGER NOT NULL,
        state VARCHAR NOT NULL, reason VARCHAR, attempt INTEGER NOT NULL,
        submitted_height BIGINT NOT NULL, scheduled_height BIGINT, schedule_block BLOB,
        seed BLOB, clock BIGINT, finished_height BIGINT,
        service_id BLOB, run INTEGER, policy VARCHAR NOT NULL)"""),
    ("state_assignments", "job_id, node_key", """CREATE TABLE IF NOT EXISTS state_assignments (
        job_id BLOB NOT NULL, node_key BLOB NOT NULL, attempt INTEGER NOT NULL,
        assigned_height BIGINT NOT NULL, deadline BIGINT NOT NULL, status VARCHAR NOT NULL,
        note VARCHAR, acked_height BIGINT, ack_deadline BIGINT, PRIMARY KEY (job_id, node_key))"""),
    ("state_results", "job_id, node_key", """CREATE TABLE IF NOT EXISTS state_results (
        job_id BLOB NOT NULL, node_key BLOB NOT NULL, height BIGINT NOT NULL,
        tx_hash BLOB NOT NULL, receipt_id BLOB NOT NULL, result BLOB NOT NULL,
        witness BLOB NOT NULL, exit INTEGER NOT NULL, error VARCHAR, PRIMARY KEY (job_id, node_key))"""),
    ("state_receipts", "receipt_id", """CREATE TABLE IF NOT EXISTS state_receipts (
        receipt_id BLOB PRIMARY KEY, height BIGINT NOT NULL, position INTEGER NOT NULL,
        kind VARCHAR NOT NULL, issuer BLOB NOT NULL, tx_hash BLOB NOT NULL,
        envelope BLOB NOT NULL, UNIQUE (height, position))"""),
    ("state_rejections", "height, idx", """CREATE TABLE IF NOT EXISTS state_rejections (
        height BIGINT NOT NULL, idx INTEGER NOT NULL, tx_hash BLOB NOT NULL,
        type VARCHAR NOT NULL, sender BLOB NOT NULL, reason VARCHAR NOT NULL,
        PRIMARY KEY (height, idx))"""),
    ("state_proposals", "proposal_id", """CREATE TABLE IF NOT EXISTS state_proposals (
        proposal_id BLOB PRIMARY KEY, proposer BLOB NOT NULL, kind VARCHAR NOT NULL, action BLOB NOT NULL,
        height BIGINT NOT NULL, expires_height BIGINT NOT NULL, status VARCHAR NOT NULL,
        closed_height BIGINT)"""),
    ("state_votes", "proposal_id, voter", """CREATE TABLE IF NOT EXISTS state_votes (
        proposal_id BLOB NOT NULL, voter BLOB NOT NULL, height BIGINT NOT NULL, tx_hash BLOB NOT NULL,
        PRIMARY KEY (proposal_id, voter))"""),
    ("state_members", "kind, member_key", """CREATE TABLE IF NOT EXISTS state_members (
        kind VARCHAR NOT NULL, member_key BLOB NOT NULL, admitted BOOLEAN NOT NULL, height BIGINT NOT NULL,
        proposal_id BLOB NOT NULL, PRIMARY KEY (kind, member_key))"""),
    ("state_validator_sets", "from_height", """CREATE TABLE IF NOT EXISTS state_validator_sets (
        from_height BIGINT PRIMARY KEY, keys BLOB NOT NULL, executed_height BIGINT NOT NULL,
        proposal_id BLOB NOT NULL)"""),
    ("state_rule_changes", "from_height, name", """CREATE TABLE IF NOT EXISTS state_rule_changes (
        from_height BIGINT NOT NULL, name VARCHAR NOT NULL, value BIGINT NOT NULL, proposal_id BLOB NOT NULL,
        executed_height BIGINT NOT NULL, PRIMARY KEY (from_height, name))"""),
    ("state_services", "service_id", """CREATE TABLE IF NOT EXISTS state_services (
        service_id BLOB PRIMARY KEY, tenant BLOB NOT NULL, name VARCHAR NOT NULL, type VARCHAR NOT NULL,
        inputs BLOB NOT NULL, params BLOB NOT NULL, replicas INTEGER NOT NULL, policy VARCHAR NOT NULL,
        on_new_version BOOLEAN NOT NULL, every_blocks INTEGER, deadline_blocks INTEGER NOT NULL,
        state VARCHAR NOT NULL, deployed_height BIGINT NOT NULL, updated_height BIGINT NOT NULL,
        runs INTEGER NOT NULL, last_inputs BLOB, verified_job BLOB, verified_run INTEGER,
        verified_height BIGINT, UNIQUE (tenant, name))"""),
    ("state_service_placements", "service_id, slot", """CREATE TABLE IF NOT EXISTS state_service_placements (
        service_id BLOB NOT NULL, slot INTEGER NOT NULL, node_key BLOB NOT NULL, since_height BIGINT NOT NULL,
        PRIMARY KEY (service_id, slot))"""),
    ("state_decisions", "decision_id", """CREATE TABLE IF NOT EXISTS state_decisions (
        decision_id BLOB PRIMARY KEY, kind VARCHAR NOT NULL, subject BLOB NOT NULL, height BIGINT NOT NULL,
        fields BLOB NOT NULL, attested BLOB)"""),
)

TABLE_NAMES = tuple(name for name, _, _ in TABLES)


def create_tables(conn: duckdb.DuckDBPyConnection) -> None:
    """Create every state table that is missing (call inside a transaction)."""
    for _, _, ddl in TABLES:
        conn.execute(ddl)


def drop_tables(conn: duckdb.DuckDBPyConnection) -> None:
    """Drop every state table (a schema change: the state is rebuilt from the blocks)."""
    for name in TABLE_NAMES:
        conn.execute(f"DROP TABLE IF EXISTS {name}")


def clear_tables(conn: duckdb.DuckDBPyConnection, *, keep_meta: bool = True) -> None:
    """Delete every state row (call inside a transaction)."""
    for name in TABLE_NAMES:
        if keep_meta and name == "state_meta":
            continue
        conn.execute(f"DELETE FROM {name}")


def dump_state(conn: duckdb.DuckDBPyConnection) -> bytes:
    """Every state table in primary-key order, as deterministic CBOR bytes."""
    dump: dict[str, Any] = {}
    for name, key, _ in TABLES:
        cursor = conn.execute(f"SELECT * FROM {name} ORDER BY {key}")
        columns = [d[0] for d in cursor.description]
        dump[name] = {"columns": columns, "rows": [[_plain(v) for v in row] for row in cursor.fetchall()]}
    return encode(dump)


def _plain(value: Any) -> Any:
    # DuckDB hands BLOBs back as bytes (or bytearray / memoryview in some paths).
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    return value
