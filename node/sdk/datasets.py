"""Datasets as a tenant names them, and the jobs that read them.

Two records describe a dataset: the storage node's catalog row (schema, rows,
the ``data.store`` receipt of the upload) and the chain's registration (name,
version, digest), which is what a job may read. This module keeps the two in
step for the client: an upload ends registered, unless the name's latest
version already is those bytes (then nothing is sent: uploading a file twice is
a no-op); a reference (``sales``, ``sales@2``, a digest) resolves through the
chain, and a dataset stored but never registered (an upload over HTTP) is
registered with its catalog row's receipt when a job first names it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

from node.base.errors import EXIT_USAGE, ErrorCode, UserError
from node.sdk.link import Link
from node.sdk.uploads import FORMAT_BY_SUFFIX, Progress, send_file, upload_format

_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
_VERSIONED = re.compile(r".+@[0-9]+")
REGISTER_TIMEOUT_S = 120.0
TREND_REQUIRED = ("time_column", "value_column", "window")


def is_digest(text: object) -> bool:
    return isinstance(text, str) and _DIGEST.fullmatch(text) is not None


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def input_name_for(name: str) -> str:
    """A job input name (a-z, 0-9, _; 1-63) for a dataset name: ``Sales-2024.v1`` -> ``sales_2024_v1``."""
    text = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_") or "data"
    return ("_" + text if text[0].isdigit() else text)[:63]


@dataclass
class PreparedJob:
    """A ``job.submit`` payload ready to sign, with what was inferred on the way.

    Unpacks as ``payload, notes = prepared``."""

    payload: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # one line per inferred parameter, with the --param that changes it
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)  # by input name: as find_dataset returns them

    def __iter__(self) -> Iterator[Any]:
        yield self.payload
        yield self.notes

    @property
    def job_type(self) -> str:
        return str(self.payload["type"])

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.payload["params"])

    @property
    def inputs(self) -> dict[str, str]:
        """{input name: digest hex}."""
        return {name: digest.hex() for name, digest in self.payload["inputs"].items()}


def _merged(row: Mapping[str, Any], registration: Mapping[str, Any]) -> dict[str, Any]:
    """The catalog row (when this node has it) named as registered, with the version."""
    base = {"size": registration.get("size"), "format": registration.get("format"), **row}
    return {**base, "name": registration["name"], "digest": registration["digest"],
            "version": registration["version"], "registered": dict(registration)}


class Session(Protocol):
    """What the resolver uses of its client (node.sdk.client.AsyncClient)."""

    link: Link

    @property
    def rpc(self) -> Any: ...

    async def _submit(self, method: str, tx_type: str, payload: Any, *, timeout: float | None = None) -> Any: ...

    async def wait_for_receipt(self, receipt_id: str, *, timeout: float = 120.0) -> str: ...

    async def datasets(self) -> list[dict[str, Any]]: ...

    async def registrations(self, name: str | None = None) -> list[dict[str, Any]]: ...


class DatasetResolver:
    """Uploads, references and job preparation for one client (node.sdk.client.AsyncClient)."""

    def __init__(self, client: Session) -> None:
        self.client = client
        # A job's source given by digest -> what find() answered: a job needs its digest,
        # name and schema, and the bytes behind a digest never change nor is a registration
        # withdrawn, so a client submitting job after job on one dataset asks once (two
        # round trips less per submit; find_dataset itself always asks).
        self._found_by_digest: dict[str, dict[str, Any]] = {}

    # -- the chain's registry ---------------------------------------------------------------
    async def latest(self, name: str) -> dict[str, Any] | None:
        """The registration of ``name``'s latest version, None if the name is not registered."""
        from node.p2p.rpc_client import RpcCallError

        if is_digest(name) or _VERSIONED.fullmatch(name):  # as a ref it would mean a digest or a version
            rows = [r for r in await self.client.registrations(name) if r.get("latest")]
            return rows[-1] if rows else None
        try:
            return await self.client.rpc.call("analytics_dataset", {"ref": name})
        except RpcCallError as exc:
            if exc.code == ErrorCode.NOT_FOUND:
                return None
            raise

    async def register(self, row: Mapping[str, Any], name: str, receipt_id: str) -> dict[str, Any]:
        """Register the stored dataset ``row`` as ``name``'s next version, citing
        its data.store receipt (once that is on chain); return the registration."""
        await self.client.wait_for_receipt(receipt_id)
        payload = {"digest": bytes.fromhex(row["digest"]), "size": int(row["size"]), "name": name,
                   "format": row["format"], "receipt": bytes.fromhex(receipt_id)}
        done = await self.client._submit("tx_submit", "dataset.register", payload, timeout=REGISTER_TIMEOUT_S)
        with trio.move_on_after(10):
            while True:  # the answering node applied the block; a moment's grace all the same
                latest = await self.latest(name)
                if latest is not None and latest["digest"] == row["digest"]:
                    return latest  # ours, or an identical registration that won a race (then ours was refused)
                if done.get("state_rejected"):
                    break
                await trio.sleep(0.2)
        reason = done.get("state_rejected") or "the chain does not show it after the commit"
        raise UserError(f"dataset {name!r} ({row['digest']}) is stored but its registration was refused: {reason}")

    async def ensure_registered(self, row: Mapping[str, Any], name: str, receipt_id: str | None) -> dict[str, Any]:
        """``row`` as ``name``'s latest version: as it is when it already is, else registered."""
        latest = await self.latest(name)
        if latest is None or latest["digest"] != row["digest"]:
            if not receipt_id:
                raise UserError(f"dataset {name!r} ({row['digest']}) is stored but not registered, and this node "
                                "has no data.store receipt for it to cite; upload the file again")
            latest = await self.register(row, name, receipt_id)
        return _merged(row, latest)

    async def catalog_row(self, digest: str) -> dict[str, Any] | None:
        """This node's catalog row of one of your datasets (schema, rows...), None if it has none."""
        from node.p2p.rpc_client import RpcCallError

        try:
            return await self.client.rpc.call("dataset_get", {"digest": digest.lower()})
        except RpcCallError as exc:
            if exc.code in (ErrorCode.DATASET_NOT_FOUND, ErrorCode.NOT_FOUND):
                return None
            raise

    # -- what users call ----------------------------------------------------------------------
    async def upload(self, path: Path, *, name: str | None, format: str | None, on_bad_rows: str,
                     progress: Progress | None) -> dict[str, Any]:
        if not path.is_file():
            raise UserError(f"{path}: no such file", exit_code=EXIT_USAGE)
        name, fmt = name or path.stem, upload_format(path, format)
        known = await self._already_latest(path, name, fmt)
        if known is not None:
            if progress is not None:
                progress(known["size"], known["size"])
            return known
        row = await send_file(self.client.link, path, name=name, fmt=fmt, on_bad_rows=on_bad_rows, progress=progress)
        receipt = row.get("receipt") or {}
        return await self.ensure_registered(row, name, receipt.get("id") or row.get("receipt_id"))

    async def _already_latest(self, path: Path, name: str, fmt: str) -> dict[str, Any] | None:
        """The dataset, when ``path`` holds exactly the bytes of ``name``'s latest
        version and this node has its catalog row: a second upload of a file sends
        nothing. Hashed locally only when the size and format already match."""
        latest = await self.latest(name)
        if latest is None or latest.get("size") != path.stat().st_size or latest.get("format") != fmt:
            return None
        if await trio.to_thread.run_sync(_file_sha256, path) != latest["digest"]:
            return None
        row = await self.catalog_row(latest["digest"])
        return None if row is None else {**_merged(row, latest), "deduplicated": True}

    async def find(self, ref: str) -> dict[str, Any]:
        from node.p2p.rpc_client import RpcCallError

        text = ref.strip() if isinstance(ref, str) else ""
        if not text:
            raise UserError("dataset: expected a name, name@version or 64 hex characters", exit_code=EXIT_USAGE)
        if is_digest(text):
            text = text.lower()
        try:
            registration = await self.client.rpc.call("analytics_dataset", {"ref": text})
        except RpcCallError as exc:
            if exc.code == ErrorCode.INVALID_PARAMS:
                raise UserError(f"dataset {text!r:.200}: {exc.message}", exit_code=EXIT_USAGE) from None
            if exc.code != ErrorCode.NOT_FOUND:
                raise
            stored = await self._stored_unregistered(text)
            if stored is None:
                raise UserError(f"dataset {text!r:.200}: {exc.message}") from None
            return await self.ensure_registered(stored, stored["name"], stored.get("receipt_id"))
        return _merged(await self.catalog_row(registration["digest"]) or {}, registration)

    async def _stored_unregistered(self, ref: str) -> dict[str, Any] | None:
        """A dataset in this node's catalog that ``ref`` names but the chain does not
        (stored over HTTP, never registered): by digest, or the newest of that name."""
        if is_digest(ref):
            return await self.catalog_row(ref)
        named = [row for row in await self.client.datasets() if row.get("name") == ref]
        return max(named, key=lambda row: row.get("created") or 0) if named else None

    async def source(self, source: str | Path, progress: Progress | None) -> dict[str, Any]:
        """One data source of a job: a file (uploaded), a digest or a dataset reference."""
        if isinstance(source, Path):
            return await self.upload(source.expanduser(), name=None, format=None, on_bad_rows="fail", progress=progress)
        if not isinstance(source, str) or not source.strip():
            raise UserError(f"data_source: expected a file, a digest or a dataset name, got {source!r:.80}", exit_code=EXIT_USAGE)
        text = source.strip()
        if is_digest(text):
            digest = text.lower()
            if digest not in self._found_by_digest:
                self._found_by_digest[digest] = await self.find(digest)
            return dict(self._found_by_digest[digest])
        path = Path(text).expanduser()
        if path.is_file():
            return await self.upload(path, name=None, format=None, on_bad_rows="fail", progress=progress)
        try:
            return await self.find(text)
        except UserError as exc:
            if "/" in text or path.suffix.lower() in (*FORMAT_BY_SUFFIX, ".json", ".txt", ".tsv"):
                raise UserError(f"data_source {text!r:.200}: no such file, and no dataset of yours by that name ({exc})",
                                exit_code=EXIT_USAGE) from None
            raise

    async def prepare(self, *, job_type: str, data_source: str | Path | Mapping[str, str | Path],
                      parameters: Mapping[str, Any] | None, replication: int, deadline_blocks: int,
                      progress: Progress | None) -> PreparedJob:
        from node.app.jobtypes import canonical_job_type, infer_trend_params
        from node.app.jobtypes import job_type as registered
        from node.cage.job import INPUT_NAME

        try:
            kind = canonical_job_type(job_type)
        except ValueError as exc:
            raise UserError(f"job_type: {exc}", exit_code=EXIT_USAGE) from None
        entry = registered(kind)
        params = dict(parameters or {})
        if isinstance(data_source, Mapping):
            sources: dict[str | None, str | Path] = {str(name): src for name, src in data_source.items()}
            if not sources:
                raise UserError("data_source: an empty map; give at least one input", exit_code=EXIT_USAGE)
        else:
            sources = {None: data_source}
        for name in sources:
            if name is not None and not INPUT_NAME.fullmatch(name):
                raise UserError(f"data_source: {name!r:.80} is not an input name (a-z, 0-9, _; 1-63, not starting "
                                "with a digit)", exit_code=EXIT_USAGE)
        datasets: dict[str, dict[str, Any]] = {}
        for given_name, src in sources.items():
            dataset = await self.source(src, progress)
            wanted = params.get(entry.input_param) if entry.input_param else None
            name = given_name or (wanted if isinstance(wanted, str) and INPUT_NAME.fullmatch(wanted) else None) \
                or input_name_for(str(dataset["name"]))
            datasets[name] = dataset
        if entry.input_param is not None and len(datasets) == 1:
            params.setdefault(entry.input_param, next(iter(datasets)))
        notes: list[str] = []
        if kind == "trend-analysis" and any(p not in params for p in TREND_REQUIRED):
            target = params.get("input")
            chosen = datasets.get(target) if isinstance(target, str) else None
            if chosen is None or not isinstance(target, str):
                raise UserError(f"parameters.input {target!r:.80}: not one of the inputs ({', '.join(datasets)})",
                                exit_code=EXIT_USAGE)
            schema = chosen.get("schema")
            if not schema:
                raise UserError(f"trend-analysis needs {', '.join(p for p in TREND_REQUIRED if p not in params)}: give "
                                f"them in parameters (this node's catalog has no schema of {chosen['name']} to infer "
                                "them from)", exit_code=EXIT_USAGE)
            try:
                params, notes = infer_trend_params(schema, params, input_name=target)
            except ValueError as exc:
                raise UserError(str(exc), exit_code=EXIT_USAGE) from None
        payload = {"type": kind, "inputs": {name: bytes.fromhex(d["digest"]) for name, d in datasets.items()},
                   "params": params, "replication": replication, "deadline_blocks": deadline_blocks}
        return PreparedJob(payload, notes, datasets)
