"""Generate a SYNTHETIC corpus of spec-lite files + catalogue for scale tests and benchmarks.

Two kinds (subcommands), both in the archive layout that ``specetl build-shards`` reads:

- ``population``: a continuous, bimodal population of bagpipes galaxies with known physical
  parameters, observed through real SDSS noise and masks (``etl/synthetic/population_corpus.py``,
  physics in ``etl/synthetic/population.py``, priors in ``docs/population.md``);
- ``from-real``: the bundled real galaxies moved to new redshifts (below).

``from-real``: THE CORPUS IS SYNTHETIC. Every file is one of the bundled *real* SDSS galaxy spectra
(``sample/sdss``, the galaxies that pass the release's catalogue cuts) moved to a new redshift:

- restframe shift on the log grid: the file's ``loglam`` moves by an integer number of 1e-4 dex
  pixels, k = round(log10((1 + z_new) / (1 + z_old)) / 1e-4), and the catalogue z is the exact
  z that this integer shift implies, so the files stay on the SDSS lattice and z is consistent
  with the spectrum to far below a pixel. The template is chosen among the 6 nearest in z, to
  keep the shift (and the blue-end loss of coverage it causes) modest.
- noise: Gaussian noise drawn from the file's own ivar is added to ``flux`` and ``ivar`` is
  halved accordingly (the variance doubled); masked pixels (ivar = 0) keep ivar 0.
- flux amplitude is not dimmed with distance (training normalises every spectrum anyway).
- redshifts: 70 % "main sample" (Gamma, k=3, θ=0.04: mode 0.08) and 30 % "LRG-like"
  (Normal 0.33 ± 0.08), both restricted to 0.005 < z < 0.5.
- new unique ids: plate 13000 + i // 1000 (above every real SDSS plate), fiberid 1 + i % 1000,
  mjd 58000 + plate offset, specobjid bit-packed like SDSS's (plate, fiber, mjd, run2d). HDU2's
  SPECOBJID/PLATE/MJD/FIBERID/Z and HDU0's PLATEID/MJD cards are patched to match.
- synthetic positions: uniform on the sky at |dec| < 60 deg (not plate-like, so that the
  sky-keyed splits of a small corpus are all filled), from their own random stream
  ``SeedSequence([seed, plate, 1])``; RA/DEC go to the catalogue and to HDU2's PLUG_RA/PLUG_DEC.

Speed: each template is parsed once; a file is the template's bytes with three HDU1 columns
and a few HDU2 fields overwritten in place (a structured numpy view on a bytearray), so a file
costs ~0.1 ms of CPU plus the write. Objects are generated per plate (1000 files) from
``SeedSequence([seed, plate])``: the corpus is identical whatever the number of processes.

Usage::

    python -m etl.synthetic population --n 20000 --data-dir DATA [--seed 0] [--release dr16]
    python -m etl.synthetic from-real --n 50000 --data-dir DATA [--seed 0] [--release dr16]

write ``DATA/<release>/spectra/<run2d>/<plate>/spec-….fits`` and ``DATA/<release>/catalog.fits``.
"""

from __future__ import annotations

import csv
import functools
import logging
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from etl.catalog import as_catalog, selection_masks, write_catalog
from etl.release import load_release, spec_lite_relpath
from etl.spectrum import Preprocessor, SpectrumRejected

#: the package's root: sample/ ships beside etl/ (in a checkout and in an installed wheel)
ROOT = Path(__file__).resolve().parents[2]

log = logging.getLogger("make_corpus")

SAMPLE = ROOT / "sample"
PER_PLATE = 1000
FIRST_PLATE = 13000
LAST_PLATE = 16383  # plate has 14 bits in a specobjid
DLOGLAM = 1e-4
LOGLAM0 = 3.578  # any lattice point: only integer offsets between pixels matter
NEAREST = 6
COLS = ("loglam", "flux", "ivar")
BANNER = "SYNTHETIC corpus: real SDSS galaxy spectra moved to new redshifts, with new ids"


@dataclass
class Template:
    """A real galaxy spectrum, parsed once: its bytes and writable-view recipes."""

    run2d: str
    z: float
    z_err: float
    data: bytes
    hdu1: tuple[int, np.dtype, int]  #: (data offset, row dtype, rows)
    hdu2: tuple[int, np.dtype]
    cards: dict[str, int]  #: primary header card -> byte offset
    specobjid_tzero: int  #: TZERO of HDU2's SPECOBJID when it is an integer column (BOSS: 2**63)
    loglam_index: np.ndarray  #: lattice index of each pixel (int64)
    flux: np.ndarray
    ivar: np.ndarray


def specobjid(plate: int, fiberid: int, mjd: int, run2d: str) -> int:
    """SDSS-style bit-packed specObjID (plate 14 bits, fiber 12, mjd-50000 14, run2d 14)."""
    code = int(run2d) if run2d.isdigit() else 0
    return (plate << 50) | (fiberid << 38) | ((mjd - 50000) << 24) | (code << 10)


def _sample_catalog() -> dict[str, np.ndarray]:
    with open(SAMPLE / "catalog.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {c: np.array([r[c] for r in rows]) for c in rows[0]}


def load_templates(release_name: str = "dr16") -> list[Template]:
    """The bundled real galaxies that pass ``release``'s cuts, sorted by z."""
    release = load_release(release_name)
    raw = _sample_catalog()
    cat = as_catalog(raw, "sample/catalog.csv")
    masks = selection_masks(cat, release.selection)
    # science-primary is about duplicates among real objects; every template is distinct
    masks.pop("science primary", None)
    keep = np.logical_and.reduce(list(masks.values()))
    preprocessor = Preprocessor(release)
    out = []
    for i in np.flatnonzero(keep):
        run2d = str(cat["RUN2D"][i])
        if run2d not in release.run2ds:  # the release has no archive path for this reduction
            continue
        rel = spec_lite_relpath(run2d, cat["PLATE"][i], cat["MJD"][i], cat["FIBERID"][i])
        path = SAMPLE / "sdss" / rel
        try:  # a real galaxy the ETL rejects at its own z (e.g. BADFLAT everywhere) is no template
            preprocessor.preprocess_file(path, float(cat["Z"][i]))
        except SpectrumRejected as err:
            log.info("not a template: %s", err)
            continue
        data = path.read_bytes()
        # astropy once per template: public record layouts and data offsets of each HDU
        with fits.open(path, memmap=False) as hdul:
            p0, p1, p2 = (hdul.fileinfo(k)["datLoc"] for k in range(3))
            dt1, dt2 = hdul[1].columns.dtype.newbyteorder(">"), hdul[2].columns.dtype
            n1 = hdul[1].header["NAXIS2"]
            tzero = int(hdul[2].columns["SPECOBJID"].bzero or 0)
            cols = {k: np.asarray(hdul[1].data[k], dtype=np.float64) for k in COLS}
        cards = {}
        for key in ("PLATEID", "MJD"):
            at = _find_card(data, p0, key)
            if at is not None:
                cards[key] = at
        out.append(
            Template(
                run2d=run2d,
                z=float(cat["Z"][i]),
                z_err=float(cat["Z_ERR"][i]),
                data=data,
                hdu1=(p1, dt1, int(n1)),
                hdu2=(p2, dt2.newbyteorder(">")),
                cards=cards,
                specobjid_tzero=tzero,
                loglam_index=np.rint((cols["loglam"] - LOGLAM0) / DLOGLAM).astype(np.int64),
                flux=cols["flux"],
                ivar=cols["ivar"],
            )
        )
    out.sort(key=lambda t: t.z)
    return out


@functools.lru_cache(maxsize=2)
def _cached_templates(release_name: str) -> list[Template]:
    # once per pool process, not once per plate (parsing 33 files with astropy takes ~1 s)
    return load_templates(release_name)


def _find_card(data: bytes, header_end: int, key: str) -> int | None:
    """Byte offset of the primary-header card ``key`` (cards are 80-byte aligned)."""
    first = data[:header_end]
    needle = f"{key:<8}= ".encode()
    pos = 0
    while (pos := first.find(needle, pos)) != -1:
        if pos % 80 == 0:
            return pos
        pos += 1
    return None


def draw_redshifts(rng: np.random.Generator, n: int) -> np.ndarray:
    """SDSS-like mixture: 70 % main sample (Gamma k=3, θ=0.04), 30 % LRG-like N(0.33, 0.08)."""
    z = np.empty(n)
    filled = 0
    while filled < n:
        m = n - filled
        main = rng.random(m) < 0.7
        cand = np.where(main, rng.gamma(3.0, 0.04, m), rng.normal(0.33, 0.08, m))
        cand = cand[(cand > 0.005) & (cand < 0.5)]
        z[filled : filled + len(cand)] = cand[: n - filled]
        filled += min(len(cand), n - filled)
    return z


def plate_positions(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """SYNTHETIC (ra, dec) in degrees of ``count`` fibres: uniform on the sky at |dec| < 60.

    Spread over the whole sky, not in a plate's 1.49 deg disc, on purpose: the split is keyed
    on the sky cell, and a corpus of a few synthetic plates would otherwise put each plate in a
    handful of cells and leave a split empty.
    """
    ra = rng.uniform(0.0, 360.0, count)
    dec = np.degrees(np.arcsin(rng.uniform(-np.sin(np.radians(60)), np.sin(np.radians(60)), count)))
    return ra, dec


def _set_card(buf: bytearray, at: int, value: int) -> None:
    # FITS fixed format: the value right-justified in columns 11-30
    buf[at + 10 : at + 30] = f"{value:>20d}".encode()


def _make_plate(args: tuple[Path, int, int, int, str, list[Template] | None]) -> dict:
    """Write the files of one plate (objects first..first+count-1); return their catalogue rows."""
    spectra_dir, plate, count, seed, release_name, templates = args
    templates = templates or _cached_templates(release_name)
    tz = np.log10(1 + np.array([t.z for t in templates]))
    rng = np.random.default_rng(np.random.SeedSequence([seed, plate]))
    mjd = 58000 + (plate - FIRST_PLATE) % 3000
    z_target = draw_redshifts(rng, count)
    rows: dict[str, list] = {k: [] for k in ("SPECOBJID", "PLATE", "MJD", "FIBERID", "RUN2D")}
    rows.update(Z=[], Z_ERR=[])
    ra, dec = plate_positions(
        np.random.default_rng(np.random.SeedSequence([seed, plate, 1])), count
    )
    rows.update(RA=ra.tolist(), DEC=dec.tolist())
    for j in range(count):
        fiberid = j + 1
        near = np.argsort(np.abs(tz - np.log10(1 + z_target[j])))[:NEAREST]
        t = templates[int(rng.choice(near))]
        shift = int(round(np.log10((1 + z_target[j]) / (1 + t.z)) / DLOGLAM))
        z_new = (1 + t.z) * 10.0 ** (shift * DLOGLAM) - 1  # the z this integer shift implies
        good = t.ivar > 0
        sigma = np.where(good, 1.0 / np.sqrt(np.where(good, t.ivar, 1.0)), 0.0)
        flux = t.flux + rng.standard_normal(len(t.flux)) * sigma
        buf = bytearray(t.data)
        p1, dt1, n1 = t.hdu1
        tab = np.frombuffer(buf, dtype=dt1, count=n1, offset=p1)
        tab["loglam"] = LOGLAM0 + (t.loglam_index + shift) * DLOGLAM
        tab["flux"] = flux
        tab["ivar"] = t.ivar / 2.0
        sid = specobjid(plate, fiberid, mjd, t.run2d)
        p2, dt2 = t.hdu2
        row = np.frombuffer(buf, dtype=dt2, count=1, offset=p2)
        row["PLATE"], row["MJD"], row["FIBERID"], row["Z"] = plate, mjd, fiberid, z_new
        for name, value in (("PLUG_RA", ra[j]), ("PLUG_DEC", dec[j])):
            if name in (dt2.names or ()):
                row[name] = value
        if "SPECOBJID" in (dt2.names or ()) and dt2["SPECOBJID"].kind == "S":
            row["SPECOBJID"] = str(sid).encode()  # SDSS-I/II HDU2: a padded string
        elif "SPECOBJID" in (dt2.names or ()):
            # BOSS HDU2: int64 with TZERO = 2**63 (FITS's unsigned convention); store raw bytes
            row["SPECOBJID"] = np.array(sid - t.specobjid_tzero, dtype=np.uint64).view(np.int64)
        if "PLATEID" in t.cards:
            _set_card(buf, t.cards["PLATEID"], plate)
        if "MJD" in t.cards:
            _set_card(buf, t.cards["MJD"], mjd)
        path = spectra_dir / spec_lite_relpath(t.run2d, plate, mjd, fiberid)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(buf)
        for k, v in zip(
            ("SPECOBJID", "PLATE", "MJD", "FIBERID", "RUN2D", "Z", "Z_ERR"),
            (sid, plate, mjd, fiberid, t.run2d, z_new, t.z_err),
            strict=True,
        ):
            rows[k].append(v)
    return rows


def corpus_dirs(
    out_dir: str | Path, n: int, release: str, banner: str, logger: logging.Logger = log
) -> tuple[Path, Path]:
    """Check that ``n`` files fit the SYNTHETIC plate range; return ``(out_dir/<release>,
    its spectra/)`` after saying, with ``banner``, what is about to be written."""
    if not 0 < n <= (LAST_PLATE - FIRST_PLATE + 1) * PER_PLATE:
        raise ValueError(f"n must be in 1..{(LAST_PLATE - FIRST_PLATE + 1) * PER_PLATE}")
    root = Path(out_dir) / release
    spectra_dir = root / "spectra"
    logger.warning("%s: writing %d files to %s", banner, n, spectra_dir)
    return root, spectra_dir


def make_corpus(
    out_dir: str | Path, n: int, seed: int = 0, release: str = "dr16", processes: int = 1
) -> Path:
    """Write ``n`` SYNTHETIC spec-lite files + catalogue under ``out_dir/<release>/``.

    Returns the catalogue path. ``processes`` > 1 writes plates in parallel (same output).
    """
    t0 = time.perf_counter()
    root, spectra_dir = corpus_dirs(out_dir, n, release, BANNER)
    templates = load_templates(release)
    jobs = []
    for k, first in enumerate(range(0, n, PER_PLATE)):
        count = min(PER_PLATE, n - first)
        jobs.append((spectra_dir, FIRST_PLATE + k, count, seed, release, None))
    if processes > 1:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(processes) as pool:
            parts = pool.map(_make_plate, jobs, chunksize=1)
    else:
        parts = [_make_plate(j[:-1] + (templates,)) for j in jobs]
    columns = {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}
    columns["SPECOBJID"] = columns["SPECOBJID"].astype(np.uint64)
    columns["CLASS"] = np.full(n, "GALAXY")
    columns["ZWARNING"] = np.zeros(n, dtype=np.int32)
    # SYNTHETIC positions: each plate a 1.5 deg field on a spiral over the sky, fibres spread on
    # it (deterministic; spreads objects over the sky so that position-keyed splits are mixed)
    k = columns["PLATE"].astype(np.float64) - FIRST_PLATE
    fib = columns["FIBERID"].astype(np.float64)
    columns["RA"] = (k * 137.508 + 1.5 * np.cos(fib)) % 360.0
    columns["DEC"] = np.degrees(np.arcsin(np.clip(2 * ((k * 0.618034) % 1.0) - 1, -1, 1)))
    columns["DEC"] = np.clip(columns["DEC"] + 0.75 * np.sin(fib), -90.0, 90.0)
    catalog_path = root / "catalog.fits"
    columns["SYNTHETIC"] = np.ones(len(columns["SPECOBJID"]), dtype=bool)
    write_catalog(as_catalog(columns, "synthetic corpus"), catalog_path)
    log.warning("%s: %d files + %s in %.1f s", BANNER, n, catalog_path, time.perf_counter() - t0)
    return catalog_path
