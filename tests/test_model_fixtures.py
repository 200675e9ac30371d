"""Shards for the model tests, built from the bundled real sample with the ETL library.

Not a test module itself (no tests): the model tests import `sample_shards` from here. The model
package never imports `etl`; only these tests do, to build realistic shards.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample"
N_ROWS = 46  # 28 train, 9 valid, 9 test


def build_sample_shards(out: Path, n_train_shards: int = 2) -> Path:
    """Preprocess every usable spectrum of sample/catalog.csv into train/valid/test shards.

    Split by row order (every 5th row → valid, every 5th+1 → test) so it is deterministic;
    train rows are spread over `n_train_shards` files. Returns the shards folder.
    """
    from etl.release import load_release, spec_lite_relpath
    from etl.shard_task import shard_attrs
    from etl.spectrum import Preprocessor, SpectrumRejected
    from shardio import sha256_file, write_shard

    release = load_release("dr16")
    prep = Preprocessor(release)
    rows: list[dict] = []
    with open(SAMPLE / "catalog.csv") as f:
        for r in csv.DictReader(f):
            path = (
                SAMPLE
                / "sdss"
                / spec_lite_relpath(r["RUN2D"], int(r["PLATE"]), int(r["MJD"]), int(r["FIBERID"]))
            )
            if not path.exists():
                continue
            try:
                p = prep.preprocess_file(path, float(r["Z"]))
            except SpectrumRejected:
                continue
            rows.append(
                {
                    "flux": p.flux,
                    "ivar": p.ivar,
                    "z": float(r["Z"]),
                    "zerr": float(r["Z_ERR"]),
                    "norm": p.norm,
                    "specobjid": r["SPECOBJID"],
                    "ra": float(r["RA"]),
                    "dec": float(r["DEC"]),
                    "plate": int(r["PLATE"]),
                    "mjd": int(r["MJD"]),
                    "fiberid": int(r["FIBERID"]),
                }
            )
    rows.sort(key=lambda r: int(r["specobjid"]))
    # a fixed, evenly spread subset of 46 spectra keeps the model tests' training fast
    step = len(rows) / N_ROWS
    rows = [rows[int(i * step)] for i in range(min(N_ROWS, len(rows)))]
    splits = {"train": [], "valid": [], "test": []}
    for i, r in enumerate(rows):
        splits[("train", "train", "train", "valid", "test")[i % 5]].append(r)
    shards_dir = out / "shards"
    entries = []
    for split, rs in splits.items():
        n_files = n_train_shards if split == "train" else 1
        for j, part in enumerate(np.array_split(np.arange(len(rs)), n_files)):
            sel = [rs[k] for k in part]
            cols = {k: np.array([r[k] for r in sel]) for k in sel[0]}
            rel = f"{split}/shard-{j:05d}.h5"
            digest = write_shard(
                shards_dir / rel, cols, release.wave_obs, shard_attrs(release, split)
            )
            assert digest == sha256_file(shards_dir / rel)
            entries.append(
                {
                    "path": rel,
                    "split": split,
                    "rows": len(sel),
                    "sha256": digest,
                    "specobjid_min": str(min(int(v) for v in cols["specobjid"])),
                    "specobjid_max": str(max(int(v) for v in cols["specobjid"])),
                    "inputs_sha256": "",
                }
            )
    index = {
        "format": "specetl-shard-index",
        "format_version": 2,
        "release": release.name,
        "manifest_sha256": release.manifest_sha256,
        "npix": len(release.wave_obs),
        "shards": entries,
    }
    (shards_dir / "index.json").write_text(json.dumps(index, indent=1))
    return shards_dir
