"""The Dask client every pipeline runs on: a local cluster by default, or an existing one.

``--scheduler tcp://host:8786`` connects to a running distributed scheduler, so the same task
graph that runs on a laptop runs on many machines. Without it we start a LocalCluster with one
single-threaded worker process per core (the work is Python + I/O bound per task; processes
sidestep the GIL, and each task owns its files so nothing is shared between workers).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

log = logging.getLogger(__name__)


#: distributed's nanny starts each worker with MALLOC_TRIM_THRESHOLD_=65536 (to hand freed memory
#: back to the OS). Setting that variable switches off glibc's adaptive mmap threshold, so every
#: array above 128 kB becomes a fresh mapping whose pages fault in zeroed: a DESI shard task
#: (arrays of a few MB, allocated per coadd) ran 1.7-2.2x slower on a worker than in the
#: driver. None unsets it; a value in the OS environment still wins (distributed's rule)
_WORKER_ENVIRON = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


@contextlib.contextmanager
def dask_client(
    scheduler: str | None = None, workers: int | None = None, threads: int | None = None
) -> Iterator[object]:
    """Yield a ``distributed.Client``; closes what it started on exit.

    ``scheduler``: address of an existing scheduler (``tcp://…``) or None for a local cluster
    with ``workers`` processes (default: the number of usable cores). ``threads``: instead, an
    in-process cluster of one worker with that many threads (starts in ~0.2 s instead of seconds
    for spawning and importing in worker processes; right for I/O-bound work that releases the
    GIL, such as downloads).
    """
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        log.info("connecting to Dask scheduler %s", scheduler)
        with Client(scheduler) as client:
            yield client
        return
    if threads:
        log.info("starting an in-process Dask cluster with %d thread(s)", threads)
        cluster_kw = dict(n_workers=1, threads_per_worker=threads, processes=False)
    else:
        n = max(1, workers or usable_cores())
        log.info("starting a local Dask cluster with %d worker process(es)", n)
        cluster_kw = dict(n_workers=n, threads_per_worker=1, processes=True)
    with contextlib.ExitStack() as stack:
        with _ctrl_c_for_this_process_only(), dask.config.set(_WORKER_ENVIRON):
            cluster = stack.enter_context(
                LocalCluster(**cluster_kw, dashboard_address=None, silence_logs=logging.WARNING)
            )
            client = stack.enter_context(Client(cluster))
            if not threads:
                client.register_plugin(QuietShutdown(), name="specetl-quiet-shutdown")
        yield client


@contextlib.contextmanager
def _ctrl_c_for_this_process_only() -> Iterator[None]:
    """Start the cluster with SIGINT ignored: the worker processes it spawns inherit that (an
    ignored signal stays ignored across exec, and Python keeps it so), so a Ctrl-C reaches only
    this process (one KeyboardInterrupt; the `with` closes the cluster) instead of every worker
    mid-import (a traceback each). The price: a Ctrl-C in the seconds the cluster takes to start
    is ignored; the next one stops the run."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


#: what a worker logs, with a traceback, when its heartbeat meets a scheduler that is closing
HEARTBEAT_FAILED = "Failed to communicate with scheduler during heartbeat"


class QuietShutdown(WorkerPlugin):
    """A worker plugin: drop the heartbeat traceback a worker logs while the cluster shuts down.

    When a run ends, the scheduler can close while a worker's heartbeat is in flight; the worker
    then logs HEARTBEAT_FAILED at ERROR with three chained tracebacks into the user's terminal,
    after a run that succeeded. The record is dropped only while that worker is itself closing;
    a running worker that loses its scheduler still says so.
    """

    def setup(self, worker) -> None:
        self._filter = _HeartbeatAtShutdown(worker)
        logging.getLogger("distributed.worker").addFilter(self._filter)

    def teardown(self, worker) -> None:
        logging.getLogger("distributed.worker").removeFilter(self._filter)


class _HeartbeatAtShutdown(logging.Filter):
    def __init__(self, worker) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(HEARTBEAT_FAILED):
            return True
        status = getattr(getattr(self.worker, "status", None), "name", "running")
        return status in ("init", "running", "paused")  # keep it unless the worker is closing


def usable_cores() -> int:
    """Cores this process may run on (respects CPU affinity / container limits)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def as_slots_free(
    client: Any,
    submit: Callable[[Any], Any],
    items: list,
    stop: Callable[[Any], bool],
) -> Iterator[tuple[Any, Any]]:
    """One task per item (``submit(item)`` -> a future), started as the cluster's worker
    threads free up; yield (item, result) as tasks finish.

    Submitting as slots free (a task lasts minutes at scale, so the round trip is nothing) lets
    a result stop the run at once: after one for which ``stop(result)`` is true nothing new is
    submitted, the tasks in flight are waited for (nothing is still writing on return), and the
    items never submitted are yielded last, with None for their result.
    """
    from distributed import as_completed

    slots = max(1, sum(client.nthreads().values()))
    queue = list(reversed(items))
    started: dict[str, Any] = {}

    def start() -> Any:
        item = queue.pop()
        future = submit(item)
        started[future.key] = item
        return future

    never: list = []
    pending = as_completed([start() for _ in range(min(slots, len(queue)))])
    for future in pending:
        result = future.result()
        item = started.pop(future.key)
        future.release()
        if stop(result):
            never, queue[:] = never + queue[::-1], []
        elif queue:
            pending.add(start())
        yield item, result
    yield from ((item, None) for item in never)
