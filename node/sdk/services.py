"""Services in the client library: deploy, scale, stop, read and follow them.

A service (docs/services.md) is a job template the chain re-runs on its own:
when one of its input datasets gets a new version, or every N blocks, on the
nodes it placed the service on. Its result is its latest verified run::

    async with AsyncClient.connect(node, key) as client:
        await client.deploy_service("daily-sales", job_type="sql", inputs="sales",
                                    params={"query": "SELECT count(*) AS n FROM sales"})
        async for result in client.follow_service("daily-sales"):   # each new verified run
            print(result["run"], result["rows"])

Inputs are dataset NAMES (each run reads the latest version of each), given
as one name or ``{input name: dataset name}``. The job type's spelling and
the trend-analysis parameters are worked out exactly as for a job
(node/sdk/datasets.py ``prepare``), so a service and a job from the same
arguments run the same template.
"""

from __future__ import annotations

import queue
import re
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from node.base.errors import EXIT_USAGE, ErrorCode, UserError
from node.base.retry import Backoff, retry
from node.sdk.datasets import is_digest

if TYPE_CHECKING:
    from node.p2p.rpc_client import RpcClient
    from node.sdk.datasets import DatasetResolver
    from node.sdk.link import Link

__all__ = ["PreparedService", "ServiceMethods", "SyncServiceMethods", "service_name"]

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
POLL_S = 0.5  # chain_head polls when the node offers no subscription
QUIET_S = 5.0  # with a subscription: look anyway after this long without a block (a dropped notification)
APPEAR_S = 60.0  # how long follow_service waits for a just-deployed service to reach a block


def service_name(name: object) -> str:
    """``name`` if it is a service name (a-z, 0-9, ``.``, ``_``, ``-``; 1-64, starting with a letter or digit)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UserError(f"service name {name!r:.80}: expected 1-64 of a-z, 0-9, '.', '_', '-', starting with a "
                        "letter or digit", exit_code=EXIT_USAGE)
    return name


def _trigger(on_new_version: bool, every_blocks: int | None) -> dict[str, Any]:
    if every_blocks is not None:
        if isinstance(every_blocks, bool) or not isinstance(every_blocks, int) or every_blocks < 1:
            raise UserError(f"every_blocks {every_blocks!r:.40}: expected a positive number of blocks", exit_code=EXIT_USAGE)
        return {"every_blocks": every_blocks}
    if not on_new_version:
        raise UserError("a service needs a trigger: on_new_version=True, or every_blocks=N", exit_code=EXIT_USAGE)
    return {"on_new_version": True}


def _dataset_names(inputs: Mapping[str, str] | str) -> Mapping[str, str] | str:
    """``inputs`` checked to be dataset names: a service always reads the latest version."""
    refs = list(inputs.values()) if isinstance(inputs, Mapping) else [inputs]
    if not refs:
        raise UserError("inputs: an empty map; give at least one {input name: dataset name}", exit_code=EXIT_USAGE)
    for ref in refs:
        if not isinstance(ref, str) or not ref.strip():
            raise UserError(f"inputs: expected dataset names, got {ref!r:.80}", exit_code=EXIT_USAGE)
        if is_digest(ref.strip()) or re.fullmatch(r".+@[0-9]+", ref.strip()):
            raise UserError(f"inputs: {ref.strip()!r:.80} names one version; a service reads the latest version of a "
                            "dataset, so give its name", exit_code=EXIT_USAGE)
    return {k: v.strip() for k, v in inputs.items()} if isinstance(inputs, Mapping) else inputs.strip()


@dataclass
class PreparedService:
    """A ``service.deploy`` payload ready to sign, with what was inferred on the way."""

    payload: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # one line per inferred parameter
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)  # by input name, as find_dataset returns them


class ServiceMethods:
    """The service methods of :class:`node.sdk.client.AsyncClient` (mixed into it)."""

    if TYPE_CHECKING:
        _datasets: DatasetResolver
        link: Link
        _subscribed: tuple[int, int] | None

        @property
        def rpc(self) -> RpcClient: ...

        async def _submit(self, method: str, tx_type: str, payload: Any, *, timeout: float | None = None) -> Any: ...

        def _connection(self) -> tuple[int, int]: ...

    async def prepare_service(self, name: str, *, job_type: str, inputs: Mapping[str, str] | str,
                              params: Mapping[str, Any] | None = None, replicas: int = 2, policy: str = "processing",
                              on_new_version: bool = True, every_blocks: int | None = None,
                              deadline_blocks: int = 20) -> PreparedService:
        """Everything :meth:`deploy_service` does short of submitting: the
        ``service.deploy`` payload, the ``notes`` on inferred parameters, the
        ``datasets`` by input (as registered now)."""
        trigger = _trigger(on_new_version, every_blocks)
        job = await self._datasets.prepare(job_type=job_type, data_source=_dataset_names(inputs), parameters=params,
                                           replication=replicas, deadline_blocks=deadline_blocks, progress=None)
        payload = {"name": service_name(name), "type": job.job_type,
                   "inputs": {inp: str(job.datasets[inp]["name"]) for inp in sorted(job.payload["inputs"])},
                   "params": job.params, "replicas": replicas, "policy": policy, "trigger": trigger,
                   "deadline_blocks": deadline_blocks}
        return PreparedService(payload, job.notes, job.datasets)

    async def deploy_service(self, name: str, *, job_type: str, inputs: Mapping[str, str] | str,
                             params: Mapping[str, Any] | None = None, replicas: int = 2, policy: str = "processing",
                             on_new_version: bool = True, every_blocks: int | None = None,
                             deadline_blocks: int = 20) -> dict[str, Any]:
        """Deploy (or deploy again, after a stop) a service of yours; its first run
        starts in the block that takes it. Returns ``service_id``, ``name``,
        ``tx``, ``receipt_id`` and the ``notes`` on inferred parameters."""
        prepared = await self.prepare_service(name, job_type=job_type, inputs=inputs, params=params, replicas=replicas,
                                              policy=policy, on_new_version=on_new_version, every_blocks=every_blocks,
                                              deadline_blocks=deadline_blocks)
        return await self.deploy_prepared(prepared)

    async def deploy_prepared(self, prepared: PreparedService) -> dict[str, Any]:
        """Sign and submit a service :meth:`prepare_service` prepared."""
        answer = dict(await self._submit("service_deploy", "service.deploy", prepared.payload))
        return {**answer, "notes": list(prepared.notes)}

    async def scale_service(self, name: str, replicas: int) -> dict[str, Any]:
        """Change how many nodes run each new run of a service of yours."""
        return dict(await self._submit("service_scale", "service.scale", {"name": service_name(name), "replicas": replicas}))

    async def stop_service(self, name: str) -> dict[str, Any]:
        """Stop a service of yours: its placements are cleared, its active runs cancelled."""
        return dict(await self._submit("service_stop", "service.stop", {"name": service_name(name)}))

    async def services(self) -> list[dict[str, Any]]:
        """Your services by name: type, replicas, state, trigger, runs, latest verified run."""
        return list((await self.rpc.call("service_list"))["services"])

    async def service_status(self, name: str) -> dict[str, Any] | None:
        """A service of yours (template, placements, recent runs, ``last_verified``),
        or None when there is none by that name (yet: a deploy takes a block)."""
        from node.p2p.rpc_client import RpcCallError

        try:
            return dict(await self.rpc.call("service_status", {"name": service_name(name)}))
        except RpcCallError as exc:
            if exc.code == ErrorCode.NOT_FOUND:
                return None
            raise

    async def service_result(self, name: str, *, retry_for: float = 30.0) -> dict[str, Any]:
        """The result table of a service's latest verified run (``run``, ``job_id``,
        ``columns``, ``rows``, ``result_digest``, ``computed_by``, ``served_by``).
        RpcCallError RESULT_NOT_AVAILABLE (data: the latest run's state) when
        no run is verified yet; retries while the holders are briefly unreachable."""
        from node.p2p.rpc_client import RpcCallError

        def unavailable_now(exc: RpcCallError) -> bool:
            return exc.code == ErrorCode.RESULT_NOT_AVAILABLE and isinstance(exc.data, dict) and "holders" in exc.data

        params = {"name": service_name(name)}
        return dict(await retry(lambda: self.rpc.call("service_result", params, timeout=60), backoff=Backoff(0.5),
                                retry_on=RpcCallError, when=unavailable_now, deadline=trio.current_time() + retry_for))

    async def follow_service(self, name: str, *, include_current: bool = True) -> AsyncIterator[dict[str, Any]]:
        """Each newly verified result of a service, as :meth:`service_result`
        answers it, in run order (a run verified before a later one was is
        skipped once the later one is out). Starts with the current result
        when ``include_current``. Checks once per block (``chain_subscribe``,
        else polling the head); ends after the service is stopped."""
        from node.sdk.link import is_transport_failure

        service_name(name)
        seen = 0
        waited = trio.current_time()
        first = True
        while True:
            # A follower runs for hours: a dropped connection (a missed keepalive on a busy
            # machine, a node restart) is dialled again and the subscription renewed.
            generation = self.link.generation
            try:
                async for _ in self._blocks():
                    status = await self.service_status(name)
                    if status is None:
                        if trio.current_time() - waited > APPEAR_S:
                            raise UserError(f"no service named {name!r} of yours")
                        continue
                    verified = status.get("last_verified") or {}
                    run = int(verified.get("run") or 0)
                    if first and not include_current:
                        seen = run
                    first = False
                    if run > seen:
                        result = await self.service_result(name)
                        seen = max(seen, int(result["run"]))
                        yield result
                    if status.get("state") == "stopped":
                        return
            except Exception as exc:
                if not is_transport_failure(exc):
                    raise
                await self.link.reconnect(generation)  # UnreachableError when the node is gone for good

    async def _blocks(self) -> AsyncGenerator[None, None]:
        """Yields now, then once after each new block (or several, coalesced)."""
        from node.p2p.rpc_client import RpcCallError

        yield None
        notifications = None
        try:
            # Once per connection: each chain_subscribe adds a stream of notifications,
            # and a client may wait for many jobs one after another.
            if getattr(self, "_subscribed", None) != self._connection():
                await self.rpc.call("chain_subscribe")
                self._subscribed = self._connection()
            notifications = self.rpc.notifications
        except RpcCallError:
            pass  # the node offers no subscription here: poll
        height = (await self.rpc.call("chain_head"))["height"]
        while True:
            if notifications is not None:
                try:
                    with trio.move_on_after(QUIET_S):
                        await notifications.receive()
                    while True:  # blocks that came while we were busy: one check covers them all
                        notifications.receive_nowait()
                except trio.WouldBlock:
                    pass
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    notifications = None  # the connection went: poll on (calls report a dead node)
            else:
                while (now := (await self.rpc.call("chain_head"))["height"]) == height:
                    await trio.sleep(POLL_S)
                height = now
            yield None


class SyncServiceMethods:
    """The service methods of :class:`node.sdk.client.Client` (one connection per call)."""

    if TYPE_CHECKING:
        def _run(self, method: str, *args: Any, **kwargs: Any) -> Any: ...

        def _async_client(self) -> Any: ...

    def prepare_service(self, name: str, **kwargs: Any) -> PreparedService:
        return self._run("prepare_service", name, **kwargs)

    def deploy_service(self, name: str, *, job_type: str, inputs: Mapping[str, str] | str,
                       params: Mapping[str, Any] | None = None, replicas: int = 2, policy: str = "processing",
                       on_new_version: bool = True, every_blocks: int | None = None,
                       deadline_blocks: int = 20) -> dict[str, Any]:
        return self._run("deploy_service", name, job_type=job_type, inputs=inputs, params=params, replicas=replicas,
                         policy=policy, on_new_version=on_new_version, every_blocks=every_blocks,
                         deadline_blocks=deadline_blocks)

    def scale_service(self, name: str, replicas: int) -> dict[str, Any]:
        return self._run("scale_service", name, replicas)

    def stop_service(self, name: str) -> dict[str, Any]:
        return self._run("stop_service", name)

    def services(self) -> list[dict[str, Any]]:
        return self._run("services")

    def service_status(self, name: str) -> dict[str, Any] | None:
        return self._run("service_status", name)

    def service_result(self, name: str) -> dict[str, Any]:
        return self._run("service_result", name)

    def follow_service(self, name: str, *, include_current: bool = True) -> Iterator[dict[str, Any]]:
        """:meth:`ServiceMethods.follow_service` for plain Python: a generator
        (closing it, or leaving its ``for`` loop, ends the connection)."""
        items: queue.Queue[tuple[str, Any]] = queue.Queue()
        started = threading.Event()
        control: dict[str, Any] = {}

        async def follow() -> None:
            with trio.CancelScope() as scope:
                control.update(scope=scope, token=trio.lowlevel.current_trio_token())
                started.set()
                async with self._async_client() as client:
                    async for result in client.follow_service(name, include_current=include_current):
                        items.put(("result", result))

        def thread() -> None:
            try:
                trio.run(follow)
                items.put(("end", None))
            except BaseException as exc:  # noqa: BLE001 -- handed to the consumer, raised there
                started.set()
                items.put(("error", exc))

        worker = threading.Thread(target=thread, name=f"follow-{name}", daemon=True)
        worker.start()
        try:
            while True:
                kind, value = items.get()
                if kind == "result":
                    yield value
                elif kind == "error":
                    from node.base.errors import sole_exception

                    raise sole_exception(value) if isinstance(value, BaseExceptionGroup) else value
                else:
                    return
        finally:
            started.wait()
            if worker.is_alive() and "token" in control:
                try:
                    trio.from_thread.run_sync(control["scope"].cancel, trio_token=control["token"])
                except trio.RunFinishedError:
                    pass
            worker.join(timeout=10)
