"""Write a SYNTHETIC galaxy population as SDSS spec-lite files + a catalogue (archive layout).

THE SPECTRA ARE SYNTHETIC: bagpipes models (``etl/synthetic/population.py``) observed through the
noise and masks of the real bundled SDSS galaxies. Each file is a real spec-lite file of one of
those galaxies (the noise template, drawn at random) with:

- HDU 0: ``SYNTHETIC = T``; PLATEID and MJD of the new object;
- HDU 1: ``flux`` = model + Gaussian noise, ``ivar`` = the template's ivar rescaled to the drawn
  median S/N, ``model`` = the noiseless model; ``loglam``, ``and_mask``, ``or_mask``, ``wdisp``,
  ``sky`` stay the template's (so the masks are real);
- HDU 2: the template's specObj row (same columns and FITS formats) with the identity of the new
  object (SPECOBJID, PLATE, MJD, FIBERID, PLUG_RA/PLUG_DEC), CLASS GALAXY, SUBCLASS blank,
  ZWARNING 0, SPECPRIMARY 1, Z and a small Z_ERR, VDISP = σ, SN_MEDIAN_ALL; the photometric
  object ids blanked; plus the true parameters as extra ``TRUE_*`` columns and ``SYNTHETIC``;
- no HDU 3 (the real galaxy's emission-line fits would describe another spectrum).

Ids: plates 14000+ (no real SDSS plate is numbered above ~12,600), 1000 fibres each, MJD
59000 + plate offset; specobjid bit-packed like SDSS's. Sky positions are uniform on the sphere
over RA 110-260°, Dec -5-65° (an SDSS-like northern cap). Objects are generated in chunks of
250 from ``SeedSequence([seed, plate, chunk])``, so the corpus is byte-identical whatever the
number of processes.
"""

from __future__ import annotations

import functools
import io
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from etl.catalog import as_catalog, write_catalog
from etl.release import spec_lite_relpath
from etl.synthetic.from_real import (
    Template,
    _find_card,
    _set_card,
    corpus_dirs,
    load_templates,
    specobjid,
)
from etl.synthetic.population import (
    DERIVED,
    DLOGLAM,
    LOGLAM0,
    PARAMS,
    Synthesiser,
    draw_parameters,
    observe,
)

log = logging.getLogger("make_corpus.population")

BANNER = "SYNTHETIC population: bagpipes galaxies observed with real SDSS noise and masks"
FIRST_PLATE = 14000
LAST_PLATE = 16383
PER_PLATE = 1000
CHUNK = 250
MJD0 = 59000
RA_RANGE = (110.0, 260.0)
DEC_RANGE = (-5.0, 65.0)
TRUE_COLUMNS = tuple(f"TRUE_{k}" for k in (*PARAMS, *DERIVED))
#: specObj fields that point at the real galaxy's photometric object: blanked
PHOTO_IDS = ("FLUXOBJID", "BESTOBJID", "TARGETOBJID", "OBJID")


@dataclass
class Skeleton:
    """A noise template's file rebuilt once with the extra HDU2 columns; filled per object."""

    template: Template
    data: bytes
    hdu1: tuple[int, np.dtype, int]
    hdu2: tuple[int, np.dtype]
    cards: dict[str, int]
    and_mask: np.ndarray


def _padded(size: int) -> int:
    return -(-size // 2880) * 2880


def build_skeleton(t: Template) -> Skeleton:
    """Rebuild template ``t`` as a 3-HDU file with SYNTHETIC = T and the TRUE_* columns.

    HDU 1 is copied byte for byte; HDU 2 gets its TTYPE/TFORM cards and row bytes extended
    (astropy's ``BinTableHDU.from_columns`` takes ~0.4 s on a 126-column table, this ~1 ms).
    """
    with fits.open(io.BytesIO(t.data), memmap=False) as hdul:
        p0 = hdul.fileinfo(0)["datLoc"]
        h2_at, p2 = hdul.fileinfo(2)["hdrLoc"], hdul.fileinfo(2)["datLoc"]
        h0 = hdul[0].header.copy()
        h2 = hdul[2].header.copy()
    if h2.get("PCOUNT", 0) or h2["NAXIS2"] != 1:
        raise ValueError(f"{t.run2d} template: HDU2 is not a one-row table without heap")
    h0["HIERARCH SYNTHETIC"] = (True, "simulated galaxy (bagpipes); real SDSS noise and mask")
    row = t.data[p2 : p2 + h2["NAXIS1"]]
    nfields = h2["TFIELDS"]
    for name in TRUE_COLUMNS:
        nfields += 1
        h2[f"TTYPE{nfields}"], h2[f"TFORM{nfields}"] = name, "D"
    nfields += 1
    h2[f"TTYPE{nfields}"], h2[f"TFORM{nfields}"] = "SYNTHETIC", "L"
    h2["TFIELDS"] = nfields
    extra = bytes(8 * len(TRUE_COLUMNS)) + b"T"
    h2["NAXIS1"] = len(row) + len(extra)
    head0, head2 = h0.tostring().encode(), h2.tostring().encode()
    hdu1 = t.data[p0:h2_at]  # HDU 1 header + data, padded, unchanged
    body2 = row + extra
    data = head0 + hdu1 + head2 + body2 + bytes(_padded(len(body2)) - len(body2))
    p1, dt1, n1 = t.hdu1
    _, dt_row = t.hdu2
    dt2 = np.dtype(dt_row.descr + [(c, ">f8") for c in TRUE_COLUMNS] + [("SYNTHETIC", "S1")])
    if dt2.itemsize != h2["NAXIS1"]:
        raise ValueError(f"{t.run2d} template: HDU2 row layout does not add up")
    new_p1 = p1 - p0 + len(head0)
    new_p2 = len(head0) + len(hdu1) + len(head2)
    and_mask = np.frombuffer(data, dtype=dt1, count=n1, offset=new_p1)["and_mask"].astype(np.int64)
    found = {k: _find_card(data, len(head0), k) for k in ("PLATEID", "MJD")}
    cards = {k: at for k, at in found.items() if at is not None}
    return Skeleton(t, data, (new_p1, dt1, n1), (new_p2, dt2), cards, and_mask)


@functools.lru_cache(maxsize=2)
def _setup(release_name: str) -> tuple[list[Skeleton], Synthesiser]:
    # once per process: parsing the templates and building bagpipes' grids take seconds
    skeletons = [build_skeleton(t) for t in load_templates(release_name)]
    k_lo = min(int(s.template.loglam_index.min()) for s in skeletons)
    k_hi = max(int(s.template.loglam_index.max()) for s in skeletons)
    return skeletons, Synthesiser(k_lo, k_hi)


#: a noise template must leave this fraction of the normalisation window unmasked
MIN_WINDOW_COVERAGE = 0.5
WINDOW = (5300.0, 5850.0)  #: restframe Å; the DR16 manifest's normalisation window


def choose_noise_templates(
    rng: np.random.Generator, skeletons: list[Skeleton], z: np.ndarray, k_lo: int, k_hi: int
) -> np.ndarray:
    """Index of a noise template for each redshift: uniform among those whose good pixels
    (ivar > 0, and_mask 0) cover >= half of the normalisation window at that z.

    Some real galaxies have long masked stretches (a bad red half); at their own z that did not
    matter, but moved under another galaxy's window they would leave nothing to normalise by.
    """
    cum = np.zeros((len(skeletons), k_hi - k_lo + 2))
    for i, sk in enumerate(skeletons):
        good = (sk.template.ivar > 0) & (sk.and_mask == 0)
        lattice = np.zeros(k_hi - k_lo + 1)
        lattice[sk.template.loglam_index[good] - k_lo] = 1.0
        cum[i, 1:] = np.cumsum(lattice)
    k1 = np.rint((np.log10(WINDOW[0] * (1 + z)) - LOGLAM0) / DLOGLAM).astype(int) - k_lo
    k2 = np.rint((np.log10(WINDOW[1] * (1 + z)) - LOGLAM0) / DLOGLAM).astype(int) - k_lo
    k1, k2 = np.clip(k1, 0, k_hi - k_lo + 1), np.clip(k2, 0, k_hi - k_lo + 1)
    coverage = (cum[:, k2] - cum[:, k1]) / np.maximum(k2 - k1, 1)
    u = rng.random(len(z))
    out = np.empty(len(z), dtype=np.int64)
    for j in range(len(z)):
        ok = np.flatnonzero(coverage[:, j] >= MIN_WINDOW_COVERAGE)
        if len(ok) == 0:
            raise ValueError(f"no noise template covers the normalisation window at z={z[j]:.3f}")
        out[j] = ok[int(u[j] * len(ok))]
    return out


def sky_positions(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """RA, Dec in degrees, uniform on the sphere over :data:`RA_RANGE` x :data:`DEC_RANGE`."""
    ra = rng.uniform(*RA_RANGE, n)
    s_lo, s_hi = np.sin(np.radians(DEC_RANGE))
    dec = np.degrees(np.arcsin(rng.uniform(s_lo, s_hi, n)))
    return ra, dec


def _put_str(row: np.ndarray, name: str, value: str, right: bool = False) -> None:
    width = row.dtype[name].itemsize
    row[name] = (value.rjust(width) if right else value).encode()


def _make_chunk(args: tuple[Path, int, int, int, int, str]) -> dict[str, list]:
    """Write objects ``first..first+count-1`` of ``plate``; return their catalogue rows."""
    spectra_dir, plate, first, count, seed, release_name = args
    skeletons, synth = _setup(release_name)
    rng = np.random.default_rng(np.random.SeedSequence([seed, plate, first]))
    params = draw_parameters(rng, count)
    which = choose_noise_templates(rng, skeletons, params["Z"], synth.k_lo, synth.k_hi)
    ra, dec = sky_positions(rng, count)
    z_err = rng.uniform(1e-5, 5e-5, count) * (1 + params["Z"])
    mjd = MJD0 + (plate - FIRST_PLATE) % 3000
    rows: dict[str, list] = {}
    for j in range(count):
        sk = skeletons[int(which[j])]
        t = sk.template
        fiberid = first + j + 1
        model_lattice, derived = synth.spectrum(params, j)
        model = model_lattice[t.loglam_index - synth.k_lo]
        flux, ivar, sn = observe(rng, model, t.ivar, sk.and_mask, float(params["SN"][j]))
        buf = bytearray(sk.data)
        p1, dt1, n1 = sk.hdu1
        tab = np.frombuffer(buf, dtype=dt1, count=n1, offset=p1)
        tab["flux"], tab["ivar"], tab["model"] = flux, ivar, model
        sid = specobjid(plate, fiberid, mjd, t.run2d)
        p2, dt2 = sk.hdu2
        row = np.frombuffer(buf, dtype=dt2, count=1, offset=p2)
        names = dt2.names or ()
        truth = {**{k: float(params[k][j]) for k in PARAMS}, **derived}
        values = {
            "PLATE": plate,
            "MJD": mjd,
            "FIBERID": fiberid,
            "Z": params["Z"][j],
            "Z_ERR": z_err[j],
            "ZWARNING": 0,
            "SPECPRIMARY": 1,
            "PLUG_RA": ra[j],
            "PLUG_DEC": dec[j],
            "VDISP": params["SIGMA"][j],
            "SN_MEDIAN_ALL": sn,
            **{f"TRUE_{k}": v for k, v in truth.items()},
        }
        for name, value in values.items():
            if name in names:
                row[name] = value
        _put_str(row, "CLASS", "GALAXY")
        for name in ("SUBCLASS", *PHOTO_IDS):
            if name in names:
                row[name] = 0 if dt2[name].kind != "S" else b""
        if dt2["SPECOBJID"].kind == "S":
            _put_str(row, "SPECOBJID", str(sid), right=True)
        else:  # BOSS: int64 with TZERO = 2**63 (FITS's unsigned convention); raw bytes
            row["SPECOBJID"] = np.array(sid - t.specobjid_tzero, dtype=np.uint64).view(np.int64)
        for key, value in (("PLATEID", plate), ("MJD", mjd)):
            if key in sk.cards:
                _set_card(buf, sk.cards[key], value)
        path = spectra_dir / spec_lite_relpath(t.run2d, plate, mjd, fiberid)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(buf)
        os.replace(tmp, path)
        catalog_row = {
            "SPECOBJID": sid,
            "PLATE": plate,
            "MJD": mjd,
            "FIBERID": fiberid,
            "RUN2D": t.run2d,
            "Z": float(params["Z"][j]),
            "Z_ERR": float(z_err[j]),
            "RA": float(ra[j]),
            "DEC": float(dec[j]),
            **{f"TRUE_{k}": v for k, v in truth.items()},
        }
        for k, v in catalog_row.items():
            rows.setdefault(k, []).append(v)
    return rows


def make_population(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    release: str = "dr16",
    processes: int = 1,
    chunk: int = CHUNK,
) -> Path:
    """Write ``n`` SYNTHETIC population spectra + catalogue under ``out_dir/<release>/``.

    Returns the catalogue path. The files depend on ``seed`` and ``chunk`` (objects per random
    stream), never on ``processes``.
    """
    t0 = time.perf_counter()
    root, spectra_dir = corpus_dirs(out_dir, n, release, BANNER, log)
    jobs = []
    for k, plate_first in enumerate(range(0, n, PER_PLATE)):
        in_plate = min(PER_PLATE, n - plate_first)
        for first in range(0, in_plate, chunk):
            count = min(chunk, in_plate - first)
            jobs.append((spectra_dir, FIRST_PLATE + k, first, count, seed, release))
    if processes > 1 and len(jobs) > 1:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(min(processes, len(jobs))) as pool:
            parts = pool.map(_make_chunk, jobs, chunksize=1)
    else:
        parts = [_make_chunk(j) for j in jobs]
    columns = {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}
    columns["SPECOBJID"] = columns["SPECOBJID"].astype(np.uint64)
    columns["CLASS"] = np.full(n, "GALAXY")
    columns["ZWARNING"] = np.zeros(n, dtype=np.int32)
    columns["SPECPRIMARY"] = np.ones(n, dtype=np.int16)
    catalog_path = root / "catalog.fits"
    catalog = as_catalog(columns, "synthetic population")
    # columns the catalogue contract does not carry (SYNTHETIC, truths) follow its own
    extra = {"SYNTHETIC": np.ones(n, dtype=bool)}
    extra.update({k: columns[k] for k in ("RA", "DEC", "SPECPRIMARY", *TRUE_COLUMNS)})
    write_catalog({**catalog, **{k: v for k, v in extra.items() if k not in catalog}}, catalog_path)
    log.warning("%s: %d files + %s in %.1f s", BANNER, n, catalog_path, time.perf_counter() - t0)
    return catalog_path
