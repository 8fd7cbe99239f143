"""Streaming, resumable dataset uploads over ``dataset_upload``.

A file is read from disk one chunk at a time, so memory stays flat whatever
its size. The first call names the upload (``name``, ``format``,
``on_bad_rows``); each later call carries the ``upload`` id and the ``offset``
of its chunk, the bytes sent before it, so the node can tell a chunk it
already has from one it misses. When the connection drops or a call fails
without an answer, the client dials again with the same key, asks
``dataset_upload_status`` how many bytes the node holds, and resends from
there; a refusal carrying ``received`` (an offset the node did not expect)
does the same without a new connection.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import trio

from node.base.errors import ErrorCode, UserError, error_code
from node.base.retry import Backoff
from node.sdk.link import Link, is_transport_failure

UPLOAD_CHUNK = 1024 * 1024  # decoded bytes per dataset_upload call: the node's limit (1.4 MB of base64 in a 4 MiB frame)
CHUNK_TIMEOUT_S = 120.0
FINAL_TIMEOUT_S = 900.0  # the final call stores, inspects and replicates the whole file
READY_WAIT_S = 60.0  # a node that is not registered on chain yet (a cluster starting) is waited for this long
IN_FLIGHT = 2  # chunk calls in flight: the next is on the wire while the node stores the last
RECONNECTS = 6  # consecutive failed calls or dials before the upload gives up
RECONNECT_BACKOFF = Backoff(0.25, factor=2.0, cap=8.0)
FORMAT_BY_SUFFIX = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}
ON_BAD_ROWS = ("fail", "skip")

Progress = Callable[[int, int], None]
"""``progress(bytes the node has acknowledged, file size)``: after each chunk,
and again with (size, size) once the node has stored the file. It can go back
after a reconnect, to what the node says it holds."""


def upload_format(path: Path, format: str | None) -> str:
    """The format to declare for ``path``: the one given, else by its suffix
    (.csv, .parquet, .jsonl / .ndjson; other suffixes are read as CSV)."""
    if format is not None:
        if format not in ("csv", "parquet", "jsonl"):
            raise UserError(f"format {format!r:.40}: expected csv, parquet or jsonl", exit_code=2)
        return format
    suffix = path.suffix.lower()
    if suffix == ".json":
        raise UserError(f"{path}: a .json file; if it holds one JSON object per line, pass format='jsonl' "
                        "(or name it .jsonl); a JSON array is not a supported format", exit_code=2)
    return FORMAT_BY_SUFFIX.get(suffix, "csv")


def _received_of(exc: Any) -> int | None:
    """The node's byte count from a refused offset (UPLOAD_OFFSET_MISMATCH's data)."""
    data = exc.data if isinstance(exc.data, dict) else {}
    received = data.get("received")
    code = error_code(exc.code)
    if code is not None and code.name == "UPLOAD_OFFSET_MISMATCH" and isinstance(received, int) and received >= 0:
        return received
    return None


async def send_file(link: Link, path: Path, *, name: str, fmt: str, on_bad_rows: str = "fail",
                    progress: Progress | None = None, chunk_size: int = UPLOAD_CHUNK, in_flight: int | None = None,
                    ready_wait: float = READY_WAIT_S) -> dict[str, Any]:
    """Upload ``path`` through ``link`` and return the node's final answer (the catalog row)."""
    if on_bad_rows not in ON_BAD_ROWS:
        raise UserError(f"on_bad_rows {on_bad_rows!r:.40}: expected fail or skip", exit_code=2)
    try:
        file = path.open("rb")
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror or exc})", exit_code=2) from None
    with file:
        sender = _Sender(link, path, file, name=name, fmt=fmt, on_bad_rows=on_bad_rows, progress=progress,
                         chunk_size=chunk_size, in_flight=max(1, IN_FLIGHT if in_flight is None else in_flight), ready_by=trio.current_time() + ready_wait)
        return await sender.run()


class _Sender:
    """One upload's state: the node's upload id and the offset to send from next.

    The first chunk goes alone (it opens the upload), then the chunks but the
    last go ``in_flight`` at a time: each request is queued for the stream's
    write lock (first come, first served) before the next is made, so they
    leave in order and the node, which runs a stream's requests as they
    arrive, appends them in order. The last chunk goes alone once every
    other is acknowledged (it makes the node store the file). A failure stops
    new chunks; the ones in flight finish (cancelling one mid-write would
    break the stream), then the upload resumes from what the node holds."""

    def __init__(self, link: Link, path: Path, file: BinaryIO, *, name: str, fmt: str, on_bad_rows: str,
                 progress: Progress | None, chunk_size: int, in_flight: int, ready_by: float) -> None:
        self.link, self.path, self.file = link, path, file
        self.name, self.fmt, self.on_bad_rows = name, fmt, on_bad_rows
        self.progress, self.chunk_size, self.in_flight, self.ready_by = progress, chunk_size, in_flight, ready_by
        self.total = os.fstat(file.fileno()).st_size
        self.upload: str | None = None
        self.offset = 0
        self.failures = 0  # calls failed in a row without progress

    def _params(self, offset: int) -> tuple[dict[str, Any], int, bool]:
        """The call sending the chunk at ``offset``: params, chunk length, final?"""
        self.file.seek(offset)
        chunk = self.file.read(self.chunk_size)
        final = offset + len(chunk) >= self.total
        params: dict[str, Any] = {"chunk": base64.b64encode(chunk).decode(), "final": final}
        if self.upload is None:
            params.update(name=self.name, format=self.fmt)
            if self.on_bad_rows != "fail":
                params["on_bad_rows"] = self.on_bad_rows
        else:
            params.update(upload=self.upload, offset=offset)
        return params, len(chunk), final

    def _acknowledged(self, received: int) -> None:
        if self.progress is not None:
            self.progress(received, self.total)

    async def run(self) -> dict[str, Any]:
        while True:
            generation = self.link.generation
            try:
                if self.upload is not None and self.in_flight > 1 and self.offset + self.chunk_size < self.total:
                    await self._burst()
                    continue
                params, _, final = self._params(self.offset)
                answer = await self.link.rpc.call("dataset_upload", params, timeout=FINAL_TIMEOUT_S if final else CHUNK_TIMEOUT_S)
            except Exception as exc:
                await self._recover(exc, generation)
                continue
            self.failures = 0
            if final:
                self._acknowledged(self.total)
                return dict(answer)
            self.upload, self.offset = answer["upload"], int(answer["received"])
            self._acknowledged(self.offset)

    async def _burst(self) -> None:
        """Send every chunk but the last from :attr:`offset`, ``in_flight`` at a time;
        raise the first failure once the calls in flight are over."""
        failure: BaseException | None = None
        acknowledged = self.offset
        slots = trio.Semaphore(self.in_flight)

        async def send(params: dict[str, Any]) -> None:
            nonlocal failure, acknowledged
            try:
                answer = await self.link.rpc.call("dataset_upload", params, timeout=CHUNK_TIMEOUT_S)
                acknowledged = max(acknowledged, int(answer["received"]))
                self._acknowledged(acknowledged)
            except Exception as exc:
                failure = failure or exc
            finally:
                slots.release()

        async with trio.open_nursery() as nursery:
            start = self.offset
            while start + self.chunk_size < self.total:
                await slots.acquire()
                if failure is not None:
                    break
                params, length, _ = self._params(start)
                nursery.start_soon(send, params)
                await trio.sleep(0)  # it queues for the write lock before the next request is made
                start += length
        self.offset = acknowledged
        if failure is not None:
            raise failure
        self.failures = 0

    async def _recover(self, exc: BaseException, generation: int) -> None:
        """After a failed call: wait, resend from the node's count, start over, or give up (raise)."""
        from node.p2p.rpc_client import RpcCallError

        if not isinstance(exc, RpcCallError):
            if not is_transport_failure(exc):
                raise exc
            self.upload, self.offset, self.failures = await _resume(self.link, self.path, generation, self.upload,
                                                                    self.failures, exc)
            self._acknowledged(self.offset)
        elif exc.code == ErrorCode.NODE_NOT_READY and self.upload is None and trio.current_time() < self.ready_by:
            await trio.sleep(0.5)
        elif exc.code == ErrorCode.RATE_LIMITED:
            data = exc.data if isinstance(exc.data, dict) else {}
            await trio.sleep(min(float(data.get("retry_after_s") or 0.5), 10.0))
        elif (received := _received_of(exc)) is not None and self.upload is not None:
            self.offset = received
        elif exc.code == ErrorCode.UPLOAD_NOT_FOUND and self.upload is not None and self.failures < RECONNECTS:
            self.failures += 1  # dropped (idle too long, or the node restarted): start over
            self.upload, self.offset = None, 0
        else:
            raise exc


async def _resume(link: Link, path: Path, generation: int, upload: str | None, failures: int,
                  error: BaseException) -> tuple[str | None, int, int]:
    """After a call that failed without an answer: a new connection, and where the
    upload stands on the node: (upload, offset, failures so far); (None, 0, ...)
    starts over. A failed dial or status call counts as one more failure."""
    from node.p2p.rpc_client import RpcCallError

    while True:
        failures += 1
        if failures > RECONNECTS:
            raise UserError(f"uploading {path}: the connection to {link.address} failed {failures - 1} times "
                            f"in a row; last: {error}") from None
        await trio.sleep(RECONNECT_BACKOFF.delay(failures - 1))
        try:
            await link.reconnect(generation)
            if upload is None:
                return None, 0, failures
            status = await link.rpc.call("dataset_upload_status", {"upload": upload}, timeout=CHUNK_TIMEOUT_S)
            return upload, int(status["received"]), failures
        except RpcCallError as exc:
            if exc.code == ErrorCode.UPLOAD_NOT_FOUND:
                return None, 0, failures  # finished (its answer lost with the connection) or dropped: the node dedups a resend
            raise
        except Exception as exc:
            if not is_transport_failure(exc):
                raise
            error, generation = exc, link.generation
