"""``specetl build-shards`` for a DESI release: fetched coadds -> shards of the same format.

Objects are grouped by coadd; each coadd is read once and its selected rows go through
:class:`etl.desi.preprocess.DesiPreprocessor` together (arm join and resample are vectorised over
rows). The preprocessed rows stream into their split's next shard, so memory is one coadd plus
one shard per split whatever the catalogue's size. Splits come from the same sky-cell key as SDSS (:func:`etl.splits.split_of`, the
manifest's ``[splits]``, identical to the SDSS manifests'), so a galaxy observed by both lands
in one split. Shards are format v2 (docs/shard-format.md) with the object key
(``targetid`` int64; ``survey``, ``program`` ASCII, listed by the ``object_key_text``
attribute) and ``specobjid`` = TARGETID as decimal text, so training and ``embed`` read them
unchanged.

A rerun whose inputs (catalogue, stored coadds, settings) are unchanged keeps every shard; any
change rebuilds the release's shards (DESI coadds are few and large, so a build is cheap next to
the fetch). Writes are atomic and the index is written last, as for SDSS.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from etl.atomic import write_json_atomic
from etl.catalog import CatalogError
from etl.desi.catalog import DESI_COLUMNS
from etl.desi.coadd import CoaddArms, CoaddError, read_coadd
from etl.desi.fetch import coadd_groups
from etl.desi.manifest import CoaddLayout, DesiRelease
from etl.desi.preprocess import DesiPreprocessor
from etl.diskspace import DiskFull, is_disk_full
from etl.reports import BuildResult
from etl.shard_index import (
    INDEX_NAME,
    REPORT_NAME,
    BuildError,
    index_document,
    locked,
    read_index,
    sweep,
    usable,
)
from etl.shard_task import shard_attrs
from etl.spectrum import SpectrumRejected
from etl.splits import split_of
from shardio import SPLITS, ShardError, write_shard

log = logging.getLogger(__name__)


def read_desi_catalog(path: Path) -> dict[str, np.ndarray]:
    """``catalog.fits`` of a DESI release (written by :func:`etl.desi.fetch.build_desi_catalog`)."""
    from astropy.table import Table

    if not path.is_file():
        raise CatalogError(f"{path}: no catalogue (run `specetl fetch` first)")
    try:
        t = Table.read(path, format="fits", character_as_bytes=False)
    except (OSError, ValueError) as err:
        raise CatalogError(f"{path}: unreadable catalogue ({err})") from None
    missing = [c for c in DESI_COLUMNS if c not in t.colnames]
    if missing:
        raise CatalogError(f"{path}: missing column(s) {', '.join(missing)}; run `specetl fetch`")
    return {c: np.asarray(t[c]) for c in DESI_COLUMNS}


def _fingerprint(release: DesiRelease, catalog_path: Path, coadds: list[Path], extra: str) -> str:
    h = hashlib.sha256()
    h.update(catalog_path.read_bytes())
    h.update(release.manifest_sha256.encode())
    h.update(extra.encode())
    for p in coadds:
        st = p.stat() if p.is_file() else None
        h.update(f"{p}:{st.st_size if st else -1}:{st.st_mtime_ns if st else -1}\n".encode())
    return h.hexdigest()


def build_desi_shards(
    release: DesiRelease,
    data_dir: str | Path,
    shard_size: int | None = None,
    compression: str = "none",
    rebuild: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = False,
    **_ignored: object,
) -> BuildResult:
    """Build ``DATA/<release>/shards/`` from ``catalog.fits`` and ``coadds/``.

    The coadds are preprocessed on Dask (``workers`` local processes, default the usable cores,
    or the cluster at ``scheduler``), in this process when ``workers`` is 1 and there is no
    scheduler; the shards are the same bytes either way.
    """
    t0 = time.perf_counter()
    root = Path(data_dir) / release.name
    shards_dir = root / "shards"
    shard_size = shard_size or release.shards.shard_size
    if shard_size <= 0:
        raise BuildError(f"shard size must be positive, got {shard_size}")
    catalog = read_desi_catalog(root / "catalog.fits")
    groups = coadd_groups(catalog)
    paths = {k: root / "coadds" / release.coadd_relpath(*k) for k in groups}
    comp = None if compression == "none" else compression
    fingerprint = _fingerprint(
        release, root / "catalog.fits", sorted(paths.values()), f"{shard_size}:{comp}"
    )
    with locked(shards_dir):
        if not rebuild:
            try:
                old = read_index(shards_dir)
            except ShardError:
                old = {}
            if old.get("inputs_sha256") == fingerprint and all(
                usable(shards_dir, e) for e in old.get("shards", [])
            ):
                result = BuildResult.from_index(shards_dir)
                result.seconds = time.perf_counter() - t0
                return result
        # the shards are rewritten under the names the old index lists: drop it first, so that
        # a build cut short (killed, a full disk) leaves no index over files it did not write
        (shards_dir / INDEX_NAME).unlink(missing_ok=True)
        n = len(catalog["TARGETID"])
        split = split_of(catalog["RA"], catalog["DEC"], np.zeros(n, dtype=np.int64), release.splits)
        writers = {
            name: _SplitShards(release, shards_dir, catalog, name, shard_size, comp)
            for name in SPLITS
        }
        result = BuildResult(shards_dir)
        jobs = []
        for key, rows in groups.items():  # coadds in (survey, program, healpix) order
            rows = rows[np.argsort(catalog["TARGETID"][rows], kind="stable")]
            jobs.append(
                CoaddJob(
                    str(paths[key]),
                    release.coadd_relpath(*key),
                    rows,
                    catalog["TARGETID"][rows],
                    np.asarray(catalog["Z"][rows], dtype=np.float64),
                )
            )
        done = _preprocessed(DesiPreprocessor(release), release.coadd, jobs, workers, scheduler)
        try:
            for out in tqdm(done, total=len(jobs), unit="coadd", desc="build-shards",
                            disable=None if progress else True):  # fmt: skip
                for i, reason, detail in out.rejected:
                    result.rejected.append(_reject(catalog, i, reason, detail))
                for j, i in enumerate(out.rows):
                    writers[split[i]].add(int(i), out.flux[j], out.ivar[j], out.norm[j])
            entries = [e for name in SPLITS for e in writers[name].finish()]
        except OSError as err:
            if not is_disk_full(err):
                raise
            written = sum(len(w.entries) for w in writers.values())
            raise DiskFull(
                shards_dir,
                f"build-shards stopped after {written} shard(s); no index.json and no partial "
                "file remain (the writer removes its own): free space and rerun",
            ) from None
        result.accepted = sum(w.accepted for w in writers.values())
        result.shards, result.written = entries, len(entries)
        result.seconds = time.perf_counter() - t0
        report = {
            "release": release.name,
            "catalogue_rows": n,
            "accepted": result.accepted,
            "rejected_count": len(result.rejected),
            "rejected_by_reason": result.rejected_by_reason,
            "shards": len(entries),
            "shards_written": len(entries),
            "shards_kept": 0,
            "seconds": round(result.seconds, 3),
            "rejected": result.rejected,
        }
        index = index_document(
            release,  # type: ignore[arg-type]
            shard_size,
            compression,
            entries,
            [],
            inputs_sha256=fingerprint,
        )
        write_json_atomic(shards_dir / REPORT_NAME, report)
        write_json_atomic(shards_dir / INDEX_NAME, index)
        sweep(shards_dir, {e["path"] for e in entries})
    log.info("%s", result.summary())
    return result


@dataclass
class CoaddJob:
    """One coadd to preprocess: its file, its label, and the catalogue rows it should hold."""

    path: str
    label: str
    rows: np.ndarray  # catalogue row numbers, TARGETID order
    targetids: np.ndarray
    z: np.ndarray


@dataclass
class CoaddRows:
    """What one coadd gave: accepted rows (catalogue row numbers, flux, ivar on the release grid,
    normalisation) and the rejected ones as (row, reason, detail)."""

    rows: list[int] = field(default_factory=list)
    flux: np.ndarray | None = None
    ivar: np.ndarray | None = None
    norm: list[float] = field(default_factory=list)
    rejected: list[tuple[int, str, str]] = field(default_factory=list)


def preprocess_coadd(pre: DesiPreprocessor, layout: CoaddLayout, job: CoaddJob) -> CoaddRows:
    """Read one coadd and preprocess its selected rows; a bad file or row is a rejection, never
    an exception. ``layout``: the release's coadd HDUs (``release.coadd``). A Dask task."""
    try:
        coadd = read_coadd(job.path, layout.arms, layout.table_hdu)
    except (CoaddError, OSError) as err:
        reason = "missing coadd" if not Path(job.path).is_file() else "unreadable coadd"
        return CoaddRows(rejected=[(int(i), reason, f"{job.label}: {err}") for i in job.rows])
    return preprocess_coadd_rows(pre, coadd, job)


def preprocess_coadd_rows(pre: DesiPreprocessor, coadd: CoaddArms, job: CoaddJob) -> CoaddRows:
    """:func:`preprocess_coadd` on a coadd already read (``job.path`` is not opened again)."""
    out = CoaddRows()
    at = coadd.rows_of(job.targetids)
    out.rejected = [(int(i), "not in coadd", job.label) for i in job.rows[at < 0]]
    keep = at >= 0
    if not keep.any():
        return out
    grid_flux, grid_ivar = pre.to_grid(coadd.arm_rows(at[keep]))
    good = []
    kept = zip(job.rows[keep], job.targetids[keep], job.z[keep], strict=True)
    for j, (i, tid, z) in enumerate(kept):
        try:
            spec = pre.finish(grid_flux[j], grid_ivar[j], float(z), str(tid))
        except SpectrumRejected as err:
            out.rejected.append((int(i), err.reason, err.detail))
            continue
        grid_flux[j], grid_ivar[j] = spec.flux, spec.ivar
        out.rows.append(int(i))
        out.norm.append(float(spec.norm))
        good.append(j)
    out.flux, out.ivar = grid_flux[good], grid_ivar[good]
    return out


def _preprocessed(
    pre: DesiPreprocessor,
    layout: CoaddLayout,
    jobs: list[CoaddJob],
    workers: int | None,
    scheduler: str | None,
) -> Iterator[CoaddRows]:
    """:func:`preprocess_coadd` of every job, yielded in the jobs' order (so the shards do not
    depend on which worker was fastest). On Dask at most two coadds per worker are in flight
    or waiting to be consumed, so memory stays flat however many coadds there are."""
    if workers == 1 and not scheduler:
        for job in jobs:
            yield preprocess_coadd(pre, layout, job)
        return
    from distributed import Future

    from etl.cluster import dask_client
    from etl.shard_task import _same, _task_failure

    with dask_client(scheduler, workers) as client:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        # a task's result, not scattered data: a worker that dies takes nothing with it
        pre_f = client.submit(_same, pre, pure=False)
        todo = iter(jobs)
        inflight: deque[tuple[CoaddJob, Future]] = deque()

        def submit() -> None:
            job = next(todo, None)
            if job is not None:
                fut = client.submit(preprocess_coadd, pre_f, layout, job, pure=False)
                inflight.append((job, fut))

        for _ in range(2 * n_workers):
            submit()
        while inflight:
            job, fut = inflight.popleft()
            try:
                out = fut.result()
            except Exception as err:
                raise BuildError(f"coadd {job.label}: {_task_failure(err)}") from err
            fut.release()
            submit()
            yield out


def _reject(catalog: dict, i: int, reason: str, detail: str) -> dict:
    log.info("targetid %s: %s (%s)", catalog["TARGETID"][i], reason, detail)
    return {"targetid": str(catalog["TARGETID"][i]), "reason": reason, "detail": detail}


class _SplitShards:
    """The accepted rows of one split, written out a shard at a time as they arrive.

    At most ``shard_size`` preprocessed rows are held, so a build's memory is one coadd plus one
    shard per split, whatever the catalogue's size (a DR1 catalogue of millions of targets would
    not fit as one array). Shards are numbered in arrival order: coadds in (survey, program,
    healpix) order, TARGETID order within a coadd."""

    def __init__(
        self,
        release: DesiRelease,
        shards_dir: Path,
        catalog: dict,
        name: str,
        shard_size: int,
        compression: str | None,
    ) -> None:
        self.release, self.shards_dir, self.catalog = release, shards_dir, catalog
        self.name, self.shard_size, self.compression = name, shard_size, compression
        self.entries: list[dict] = []
        self.accepted = 0
        self._rows: list[int] = []
        self._flux: list[np.ndarray] = []
        self._ivar: list[np.ndarray] = []
        self._norm: list[float] = []

    def add(self, row: int, flux: np.ndarray, ivar: np.ndarray, norm: float) -> None:
        """One preprocessed catalogue row (flux, ivar on the release grid; its normalisation)."""
        self._rows.append(row)
        self._flux.append(np.asarray(flux, dtype=np.float32))
        self._ivar.append(np.asarray(ivar, dtype=np.float32))
        self._norm.append(float(norm))
        self.accepted += 1
        if len(self._rows) >= self.shard_size:
            self._write()

    def finish(self) -> list[dict]:
        """Write the last, partial shard; the index entries of every shard of the split."""
        if self._rows:
            self._write()
        return self.entries

    def _write(self) -> None:
        cat, part = self.catalog, np.asarray(self._rows)
        path = f"{self.name}/shard-{len(self.entries):05d}.h5"
        attrs = shard_attrs(self.release, self.name)  # type: ignore[arg-type]
        attrs["object_key_text"] = json.dumps(["survey", "program"])
        ids = cat["TARGETID"][part]
        columns = {
            "flux": np.stack(self._flux),
            "ivar": np.stack(self._ivar),
            "z": cat["Z"][part],
            "zerr": cat["Z_ERR"][part],
            "norm": np.asarray(self._norm, dtype=np.float32),
            "specobjid": ids.astype(str),
            "ra": cat["RA"][part],
            "dec": cat["DEC"][part],
            "targetid": ids.astype(np.int64),
            "survey": cat["SURVEY"][part].astype("S16"),
            "program": cat["PROGRAM"][part].astype("S16"),
        }
        digest = write_shard(
            self.shards_dir / path, columns, self.release.wave_obs, attrs, self.compression
        )
        self.entries.append(
            {
                "path": path,
                "split": self.name,
                "rows": len(part),
                "sha256": digest,
                "bytes": (self.shards_dir / path).stat().st_size,
                "specobjid_min": str(ids.min()),
                "specobjid_max": str(ids.max()),
                "candidate_min": str(ids.min()),
                "candidates": len(part),
                "inputs_sha256": "",
            }
        )
        self._rows, self._flux, self._ivar, self._norm = [], [], [], []
