"""The local Dask cluster every pipeline runs on (etl.cluster)."""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import pytest

from etl.cluster import HEARTBEAT_FAILED, QuietShutdown, dask_client


def _heartbeat_record() -> logging.LogRecord:
    try:
        raise OSError("ConnectionPool closing.")
    except OSError:
        import sys

        exc = sys.exc_info()
    return logging.LogRecord(
        "distributed.worker", logging.ERROR, "worker.py", 1, HEARTBEAT_FAILED + ".", None, exc
    )


@pytest.mark.parametrize(("status", "shown"), [("closing", False), ("closed", False),
                                               ("running", True), ("paused", True)])  # fmt: skip
def test_the_heartbeat_traceback_is_dropped_only_while_the_worker_closes(status, shown):
    from distributed.core import Status

    worker = SimpleNamespace(status=Status[status])
    plugin, logger = QuietShutdown(), logging.getLogger("distributed.worker")
    plugin.setup(worker)
    try:
        assert logger.filter(_heartbeat_record()) is shown
        other = logging.LogRecord(
            "distributed.worker", logging.ERROR, "w.py", 1, "other", None, None
        )
        assert logger.filter(other)  # any other record passes, whatever the status
    finally:
        plugin.teardown(worker)
    assert logger.filter(_heartbeat_record())  # gone with the plugin


@pytest.mark.slow
def test_local_worker_processes_get_the_plugin():
    def filters() -> list[str]:
        return [type(f).__name__ for f in logging.getLogger("distributed.worker").filters]

    with dask_client(None, 1) as client:
        assert [v for v in client.run(filters).values()] == [["_HeartbeatAtShutdown"]]


@pytest.mark.slow
def test_local_workers_keep_glibcs_adaptive_allocator(monkeypatch):
    """distributed starts workers with MALLOC_TRIM_THRESHOLD_ set, which makes every large numpy
    allocation a fresh mapping (page faults: numpy-heavy tasks ran ~2x slower on a worker than
    in the driver); the local cluster unsets it unless the user's environment sets it."""
    # a value in the environment wins (distributed's rule), and distributed's nanny also writes
    # its value into the starting process's environment: start from an environment without it
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)

    def trim() -> str | None:
        return os.environ.get("MALLOC_TRIM_THRESHOLD_")

    with dask_client(None, 1) as client:
        assert list(client.run(trim).values()) == [None]
