"""Where batches run: inline, a local process pool, or a Dask cluster; one interface.

Each executor runs ``work.evaluate_batch`` unchanged, so the three give identical results.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from service.record import InputError
from service.screening.ndjson import PatientData
from service.screening.work import Outcome, Studies, evaluate_batch, warm_up

DASK_CONNECT_TIMEOUT = "20s"


def _ignore_sigint() -> None:
    """Ctrl-C is the parent's to handle: workers finish or are cancelled, never half-die."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Executor:
    """Submit batches, wait for any to finish; ``close(cancel=True)`` drops what is queued."""

    def submit(self, protocol_path: Studies, as_of: str, batch: list[PatientData]) -> Any:
        raise NotImplementedError

    def wait_any(self, pending: set[Any]) -> tuple[set[Any], set[Any]]:
        done, not_done = wait(pending, return_when=FIRST_COMPLETED)
        return set(done), set(not_done)

    def close(self, cancel: bool = False) -> None:
        pass

    def start(self, protocol_path: Studies) -> None:
        """Get workers ready (processes started, protocol and units loaded) while the
        caller does other work, e.g. reads the export."""

    @property
    def slots(self) -> int:
        return 1


class InlineExecutor(Executor):
    """In this process (one worker): no start-up cost, easy to debug."""

    def start(self, protocol_path: Studies) -> None:
        warm_up(protocol_path)

    def submit(self, protocol_path: Studies, as_of: str, batch: list[PatientData]) -> Future:
        future: Future = Future()
        try:
            future.set_result(evaluate_batch(protocol_path, as_of, batch))
        except BaseException as exc:  # noqa: BLE001 - delivered through the future
            future.set_exception(exc)
        return future


class PoolExecutor(Executor):
    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool = ProcessPoolExecutor(max_workers=workers, initializer=_ignore_sigint)

    def start(self, protocol_path: Studies) -> None:
        # Warm up here first: the workers are forked from this process on their first
        # submission and inherit the loaded protocol and UCUM registry instead of each
        # building them again while competing with the ingest for the CPUs.
        warm_up(protocol_path)
        for _ in range(self.workers):  # one submission per worker makes the pool start each
            self._pool.submit(warm_up, protocol_path)

    def submit(self, protocol_path: Studies, as_of: str, batch: list[PatientData]) -> Future:
        return self._pool.submit(evaluate_batch, protocol_path, as_of, batch)

    def close(self, cancel: bool = False) -> None:
        self._pool.shutdown(wait=True, cancel_futures=cancel)

    @property
    def slots(self) -> int:
        return self.workers


class DaskExecutor(Executor):
    """The same batches on a dask.distributed cluster (``tcp://host:port`` of its scheduler)."""

    def __init__(self, address: str) -> None:
        from distributed import Client, as_completed  # imported only when a cluster is used

        try:
            self._client = Client(address, set_as_default=False, timeout=DASK_CONNECT_TIMEOUT)
        except (OSError, TimeoutError, ValueError) as exc:
            raise InputError(
                f"cannot reach the Dask scheduler at {address} ({type(exc).__name__})"
            ) from None
        self._workers = max(1, sum(self._client.nthreads().values()))
        self._finished = as_completed(loop=self._client.loop)

    def submit(self, protocol_path: Studies, as_of: str, batch: list[PatientData]) -> Any:
        future = self._client.submit(evaluate_batch, protocol_path, as_of, batch, pure=False)
        self._finished.add(future)
        return future

    def wait_any(self, pending: set[Any]) -> tuple[set[Any], set[Any]]:
        future = next(self._finished)
        return {future}, pending - {future}

    def close(self, cancel: bool = False) -> None:
        self._client.close()

    @property
    def slots(self) -> int:
        return self._workers


def run_batches(
    executor: Executor,
    protocol_path: Studies,
    as_of: str,
    batches: Iterable[list[PatientData]],
    on_outcomes: Callable[[list[Outcome]], None],
    on_failure: Callable[[list[str], BaseException], None],
    inflight_per_slot: int = 3,
) -> None:
    """Keep a bounded number of batches in flight (bounded memory); hand results on in order
    of completion. A batch that fails as a whole (a worker died) goes to ``on_failure`` with
    its patient ids, so its patients become error rows instead of vanishing."""
    limit = max(2, executor.slots * inflight_per_slot)
    pending: set[Any] = set()
    members: dict[Any, list[str]] = {}
    source = iter(batches)
    exhausted = False
    while True:
        while not exhausted and len(pending) < limit:
            batch = next(source, None)
            if batch is None:
                exhausted = True
                break
            future = executor.submit(protocol_path, as_of, batch)
            members[future] = [item.patient_id for item in batch]
            pending.add(future)
        if not pending:
            return
        done, pending = executor.wait_any(pending)
        for future in done:
            pids = members.pop(future)
            try:
                outcomes = future.result()
            except Exception as exc:  # noqa: BLE001 - becomes one error row per patient
                on_failure(pids, exc)
            else:
                on_outcomes(outcomes)


def batched(items: Iterable[PatientData], max_patients: int, max_lines: int):
    """Group patients into batches (fewer hand-offs), bounded by patients and lines."""
    batch: list[PatientData] = []
    lines = 0
    for item in items:
        batch.append(item)
        lines += len(item.resources) + 1
        if len(batch) >= max_patients or lines >= max_lines:
            yield batch
            batch, lines = [], 0
    if batch:
        yield batch
