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
from collections.abc import Iterator

log = logging.getLogger(__name__)


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
        with _ctrl_c_for_this_process_only():
            cluster = stack.enter_context(
                LocalCluster(**cluster_kw, dashboard_address=None, silence_logs=logging.WARNING)
            )
            client = stack.enter_context(Client(cluster))
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


def usable_cores() -> int:
    """Cores this process may run on (respects CPU affinity / container limits)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
