"""The per-shard task of a build and the Dask loop that runs the tasks.

A task receives only its own rows of the catalogue (:class:`etl.plan.ShardTask`), reads and
preprocesses those spectra, and writes one shard file (temporary name, then a no-clobber link to
its final name). h5py objects never leave the task; the task returns a small dict of metadata
(the shard's index entry and its rejections). A full disk is returned, not raised, so that the
driver stops the build once instead of collecting a traceback from every worker.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from etl.atomic import fsync_dir
from etl.diskspace import DiskFull, is_disk_full
from etl.plan import ShardTask, _rejection
from etl.release import Release
from etl.shard_index import BuildError
from etl.spectrum import Preprocessor, SpectrumRejected
from shardio import CHUNK_ROWS, FORMAT, FORMAT_VERSION, ShardWriter
from shardio.format import ATTR_UNITS, sha256_file

# --- the task (runs on a worker) ----------------------------------------------------------------


def shard_attrs(release: Release, split: str) -> dict[str, object]:
    """File attributes of a shard of ``release`` (provenance and preprocessing settings)."""
    from etl import __version__

    g, t, n = release.grid, release.telluric, release.normalisation
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "release": release.name,
        "split": split,
        "loglam0": g.loglam0,
        "dloglam": g.dloglam,
        "npix": g.npix,
        "object_key": json.dumps(list(release.key)),
        "telluric_top_n": t.top_n,
        "telluric_half_width": t.half_width,
        "telluric_line_list": t.line_list.name,
        "norm_restframe_min": n.restframe_min,
        "norm_restframe_max": n.restframe_max,
        "specetl_version": __version__,
        "manifest_sha256": release.manifest_sha256,
        "units": json.dumps(ATTR_UNITS),
    }


def build_one_shard(
    task: ShardTask,
    preprocessor: Preprocessor,
    attrs: Mapping[str, object],
    shards_dir: str,
    compression: str | None,
) -> dict:
    """Preprocess ``task``'s spectra and write its shard; return the index entry + rejections.

    Runs in a worker process. Writes ``<shards_dir>/<task.path>`` through a temporary file and a
    hard link that refuses to overwrite (two runs can never clobber each other's shard).
    A full disk is returned as ``{"disk_full": path}`` (no file left), not raised, so that the
    driver stops the build without a traceback from every worker.
    """
    try:
        return _build_one_shard(task, preprocessor, attrs, shards_dir, compression)
    except (OSError, RuntimeError) as err:  # h5py raises either
        if not is_disk_full(err):
            raise
        return {
            "entry": None,
            "rejected": [],
            "disk_full": str(Path(shards_dir) / task.path),  # where it was being written
        }


def _build_one_shard(
    task: ShardTask,
    preprocessor: Preprocessor,
    attrs: Mapping[str, object],
    shards_dir: str,
    compression: str | None,
) -> dict:
    rows = task.rows
    n = len(task)
    npix = len(preprocessor.wave_obs)
    final = Path(shards_dir) / task.path
    staging = final.with_name(f".{final.name}.{os.getpid()}.part")
    attrs = dict(attrs, split=task.split, inputs_sha256=task.inputs_sha256)
    comp = None if compression in (None, "none") else compression
    rejected: list[dict] = []
    kept: list[np.ndarray] = []
    writer: ShardWriter | None = None  # opened at the first accepted block
    block = CHUNK_ROWS  # memory per task: one block of rows, whatever the shard size
    with contextlib.ExitStack() as stack:
        for start in range(0, n, block):
            idx = np.arange(start, min(start + block, n))
            flux = np.zeros((len(idx), npix), dtype=np.float32)
            ivar = np.zeros((len(idx), npix), dtype=np.float32)
            norm = np.zeros(len(idx), dtype=np.float32)
            good = np.zeros(len(idx), dtype=bool)
            for j, i in enumerate(idx.tolist()):
                expect = task.key(i)
                path = task.file(i)
                try:
                    pre = preprocessor.preprocess_file(path, float(rows["Z"][i]), expect)
                except SpectrumRejected as err:
                    rejected.append(_rejection(rows, i, path, err.reason, err.detail))
                    continue
                flux[j], ivar[j], norm[j] = pre.flux, pre.ivar, pre.norm
                good[j] = True
            if not good.any():
                continue
            sel = idx[good]  # rows stay sorted by specobjid
            if writer is None:
                writer = stack.enter_context(
                    ShardWriter(staging, preprocessor.wave_obs, attrs, comp, min(n, CHUNK_ROWS))
                )
            writer.append(
                {
                    "flux": flux[good],
                    "ivar": ivar[good],
                    "norm": norm[good],
                    "z": rows["Z"][sel],
                    "zerr": rows["Z_ERR"][sel],
                    "specobjid": rows["SPECOBJID"][sel],
                    "ra": rows["RA"][sel],
                    "dec": rows["DEC"][sel],
                    **{k: rows[k.upper()][sel] for k in task.layout.key},
                    # etl.synthetic's objects say so in every shard row (optional dataset)
                    **({"synthetic": rows["SYNTHETIC"][sel]} if "SYNTHETIC" in rows else {}),
                }
            )
            kept.append(sel)
        digest, size = "", 0
        if writer is not None:  # a shard whose candidates were all rejected has no file
            digest = writer.close()
            try:
                _link_no_clobber(staging, final, digest)
            finally:
                staging.unlink(missing_ok=True)
            size = final.stat().st_size
    keep = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
    ids = rows["SPECOBJID"][keep]  # sorted by numeric id (planning)
    entry = {
        "path": task.path,
        "split": task.split,
        "rows": int(len(keep)),
        "sha256": digest,
        "bytes": size,
        "specobjid_min": str(ids[0]) if len(ids) else None,
        "specobjid_max": str(ids[-1]) if len(ids) else None,
        "candidate_min": task.candidate_min,
        "candidates": n,
        "inputs_sha256": task.inputs_sha256,
    }
    return {"entry": entry, "rejected": rejected}


def _link_no_clobber(src: Path, dst: Path, digest: str) -> None:
    """Give ``src`` (sha256 ``digest``) the name ``dst`` unless ``dst`` exists (then BuildError):
    no silent overwrite. A ``dst`` with the same bytes is this task's own shard from an attempt
    whose worker was killed after linking it (Dask reran the task; shards are deterministic)."""
    try:
        os.link(src, dst)
    except FileExistsError:
        if sha256_file(dst) == digest:
            return
        raise BuildError(f"{dst}: exists already (is another build running?)") from None
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        # file systems without hard links: check-then-rename (the folder lock covers the race)
        if dst.exists() and sha256_file(dst) != digest:
            raise BuildError(f"{dst}: exists already (is another build running?)") from None
        os.replace(src, dst)
    fsync_dir(dst.parent)


def run_tasks(
    todo: list[ShardTask],
    release: Release,
    shards_dir: Path,
    compression: str,
    workers: int | None,
    scheduler: str | None,
    progress: bool,
) -> Iterator[tuple[ShardTask, dict]]:
    """Run the shard tasks on Dask; yield (task, result) as each finishes.

    At most two tasks per worker are in flight, so the scheduler never holds more than a few
    shards' worth of catalogue rows however large the catalogue (memory stays flat).
    """
    from distributed import as_completed
    from tqdm import tqdm

    from etl.cluster import dask_client

    pre = Preprocessor(release)
    with dask_client(scheduler, workers) as client:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        # a task's result, not scattered data: if a worker process dies (killed, out of memory)
        # Dask recomputes it and reruns that worker's shards, where scattered data would be lost
        # for good and every task after it cancelled
        pre_f = client.submit(_same, pre, pure=False)
        # the Release itself holds mapping proxies (not picklable): ship the attrs it implies
        attrs = shard_attrs(release, "")
        queue = list(reversed(todo))
        futures = {}

        def submit() -> object:
            task = queue.pop()
            fut = client.submit(
                build_one_shard,
                task,
                pre_f,
                attrs,
                str(shards_dir),
                compression,
                key=f"shard-{task.path}-{task.inputs_sha256[:12]}",
                pure=False,
            )
            futures[fut.key] = task
            return fut

        pending = as_completed([submit() for _ in range(min(len(queue), 2 * n_workers))])
        bar = tqdm(
            total=len(todo), unit="shard", disable=None if progress else True, desc="build-shards"
        )
        stop = ""  # a full disk: submit nothing more, let the tasks in flight finish, then raise
        try:
            for fut in pending:
                task = futures.pop(fut.key)
                try:
                    out = fut.result()
                except BuildError:
                    raise
                except Exception as err:
                    raise BuildError(f"shard {task.path}: {_task_failure(err)}") from err
                fut.release()
                bar.update(1)
                if out.get("disk_full"):
                    stop = stop or out["disk_full"]
                    queue.clear()
                    continue
                if queue:
                    pending.add(submit())
                yield task, out
        finally:
            bar.close()
        if stop:
            raise DiskFull(stop)


def _same(obj: object) -> object:
    """The object itself: a task whose result Dask can recompute on another worker."""
    return obj


def _task_failure(err: BaseException) -> str:
    """What went wrong with a shard task, in words: a worker process that kept dying (Dask gave
    up after its allowed failures) is not a bug in the task."""
    from distributed import KilledWorker

    if isinstance(err, KilledWorker):
        return (
            "the worker process died each time it ran this shard (killed? out of memory? "
            "see its log); the finished shards are kept: rerun to go on"
        )
    return f"task failed ({type(err).__name__}: {err})"
