"""Galaxy-only shards and the real non-galaxies of the bundled sample, for the embed/explore tests.

Not a test module (no tests). A model trained on the real galaxies of `sample/` (the DR16 cuts:
CLASS GALAXY, 0 < z <= 0.5, ZWARNING 0 — which also removes the sky fibres) is asked to score
held-out real galaxies against the real quasars at z <= 0.5 and the real stars: the honest test
of an outlier score.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample"


def sample_rows() -> list[dict]:
    """Rows of sample/catalog.csv (real HDU2 values) with the path of their bundled file."""
    from etl.release import spec_lite_relpath

    out = []
    with open(SAMPLE / "catalog.csv") as f:
        for r in csv.DictReader(f):
            key = (int(r["PLATE"]), int(r["MJD"]), int(r["FIBERID"]))
            r["path"] = SAMPLE / "sdss" / spec_lite_relpath(r["RUN2D"], *key)
            out.append(r)
    return out


def is_galaxy(r: dict) -> bool:
    return r["CLASS"] == "GALAXY" and int(r["ZWARNING"]) == 0 and 0 < float(r["Z"]) <= 0.5


def non_galaxy_paths() -> list[Path]:
    """The real anomalies: quasars at z <= 0.5 and stars."""
    return [r["path"] for r in sample_rows() if object_group(r) in ("QSO", "STAR")]


def object_group(r: dict) -> str | None:
    """The outlier tests' group of a real row (CLASS, Z, ZWARNING, path): "GALAXY"
    (`is_galaxy`), "QSO" (z <= 0.5), "STAR", "SKY" (`is_sky_fibre`), or None (left out)."""
    if is_galaxy(r):
        return "GALAXY"
    if r["CLASS"] == "QSO" and float(r["Z"]) <= 0.5:
        return "QSO"
    if r["CLASS"] == "STAR":
        return "STAR"
    return "SKY" if is_sky_fibre(r) else None


def is_sky_fibre(r: dict) -> bool:
    """A sky fibre the pipeline called a galaxy: CLASS GALAXY in the row, SOURCETYPE SKY in the
    file's own HDU 2 (ZWARNING bit 0, SKY, where a file has no SOURCETYPE column)."""
    from astropy.io import fits

    if r["CLASS"] != "GALAXY" or not r["path"].exists():
        return False
    with fits.open(r["path"]) as h:
        d = h[2].data
        if "SOURCETYPE" in d.columns.names:
            return str(d["SOURCETYPE"][0]).strip() == "SKY"
    return bool(int(r["ZWARNING"]) & 1)


def sky_fibre_paths() -> list[Path]:
    """The real sky fibres of the sample whose pipeline CLASS says GALAXY."""
    return [r["path"] for r in sample_rows() if is_sky_fibre(r)]


def build_galaxy_shards(out: Path) -> tuple[Path, list[Path]]:
    """Shards of the sample's real galaxies: 3/5 train, 1/5 valid, 1/5 test (by specobjid order).

    Returns the shards folder and the files of the held-out (valid + test) galaxies.
    """
    from etl.release import load_release
    from etl.shard_task import shard_attrs
    from etl.spectrum import Preprocessor, SpectrumRejected
    from shardio import write_shard

    release = load_release("dr16")
    prep = Preprocessor(release)
    rows = []
    for r in sample_rows():
        if not is_galaxy(r) or not r["path"].exists():
            continue
        try:
            p = prep.preprocess_file(r["path"], float(r["Z"]))
        except SpectrumRejected:
            continue
        rows.append((r, p))
    rows.sort(key=lambda rp: int(rp[0]["SPECOBJID"]))
    splits: dict[str, list] = {"train": [], "valid": [], "test": []}
    for i, rp in enumerate(rows):
        splits[("train", "train", "train", "valid", "test")[i % 5]].append(rp)
    shards_dir = out / "shards"
    entries = []
    for split, rps in splits.items():
        cols = {
            "flux": np.stack([p.flux for _, p in rps]),
            "ivar": np.stack([p.ivar for _, p in rps]),
            "z": np.array([float(r["Z"]) for r, _ in rps]),
            "zerr": np.array([float(r["Z_ERR"]) for r, _ in rps]),
            "norm": np.array([p.norm for _, p in rps]),
            "specobjid": np.array([r["SPECOBJID"] for r, _ in rps]),
            "ra": np.array([float(r["RA"]) for r, _ in rps]),
            "dec": np.array([float(r["DEC"]) for r, _ in rps]),
            "plate": np.array([int(r["PLATE"]) for r, _ in rps]),
            "mjd": np.array([int(r["MJD"]) for r, _ in rps]),
            "fiberid": np.array([int(r["FIBERID"]) for r, _ in rps]),
        }
        rel = f"{split}/shard-00000.h5"
        digest = write_shard(shards_dir / rel, cols, release.wave_obs, shard_attrs(release, split))
        entries.append({"path": rel, "split": split, "rows": len(rps), "sha256": digest})
    index = {
        "format": "specetl-shard-index",
        "format_version": 2,
        "release": release.name,
        "npix": len(release.wave_obs),
        "shards": entries,
    }
    (shards_dir / "index.json").write_text(json.dumps(index, indent=1))
    held_out = [r["path"] for s in ("valid", "test") for r, _ in splits[s]]
    return shards_dir, held_out


_RUNS: dict[str, tuple[Path, Path, list[Path]]] = {}


def trained_galaxy_run(tmp_path_factory) -> tuple[Path, Path, list[Path]]:
    """(shards, run, held-out galaxy files): one short fidelity run on the real galaxies, made
    once per test session (the test modules that need it share it).

    One epoch: enough for the machinery (ids, files, pages), not for the science (see
    test_outliers.py for a model that separates quasars and stars from galaxies).
    """
    if "run" not in _RUNS:
        _RUNS["run"] = train_on_galaxies(tmp_path_factory.mktemp("embed"), epochs=1)
    return _RUNS["run"]


def train_on_galaxies(
    root: Path, epochs: int, lr: float | None = None
) -> tuple[Path, Path, list[Path]]:
    """(shards, run, held-out galaxy files): build the real-galaxy shards under `root` and train
    a small fidelity model on them (cpu-small, batch 8, seed 1; `lr` None: the default)."""
    from model.train import TrainConfig, train

    shards, held_out = build_galaxy_shards(root)
    run = root / "run"
    train(
        TrainConfig(
            shards=str(shards),
            run=str(run),
            objective="fidelity",
            preset="cpu-small",
            epochs=epochs,
            batch_size=8,
            seed=1,
            progress=False,
            **({} if lr is None else {"lr": lr}),
        )
    )
    return shards, run, held_out
