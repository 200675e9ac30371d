"""Real SDSS table formats end to end, and bad catalogues as errors (issue 9).

The specObj- and spAll-format tables are the sample's real HDU 2 rows stacked as they are
(tests/real_tables.py); the expected selections are computed from those rows with astropy,
independently of etl.catalog.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from click.testing import CliRunner
from fetch_support import SAMPLE_CATALOG, SAMPLE_SDSS, sample_rows
from real_tables import expected_ids, spall_table, specobj_table

from cli import main
from etl.catalog import CatalogError
from etl.fetch import build_catalog
from etl.mirror import ArchiveMirror
from etl.release import load_release
from shardio import read_shard


def shard_ids(shards: Path) -> dict[str, dict]:
    """specobjid -> {key columns, ra, dec} of every row of every indexed shard."""
    index = json.loads((shards / "index.json").read_text())
    out = {}
    for e in index["shards"]:
        d = read_shard(shards / e["path"])
        for i, sid in enumerate(d["specobjid"].astype(str).tolist()):
            out[sid] = {k: d[k][i].item() for k in (*index["object_key"], "ra", "dec")}
    return out


def _cli(*args: str):
    return CliRunner().invoke(main, list(args))


def test_specobj_bulk_fetch_then_build_shards_selects_exactly_the_cuts(tmp_path):
    """`specetl fetch --catalog specobj` from the mirror's bulk URL, then `build-shards`."""
    release = load_release("dr16")
    bulk = specobj_table().write(tmp_path / "specObj-dr16.fits")
    want = expected_ids(bulk, release.selection)
    data = tmp_path / "DATA"
    with ArchiveMirror(SAMPLE_SDSS, release) as mirror:
        mirror.add_file(urlsplit(release.specobj_url(mirror.base_url)).path[4:], bulk)
        res = _cli("fetch", "--data-dir", str(data), "--catalog", "specobj",
                   "--base-url", mirror.base_url)  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads((data / "dr16/fetch-report.json").read_text())
    assert report["selected"] == len(want) == report["downloaded"] > 50
    res = _cli("build-shards", "--data-dir", str(data), "--workers", "1")
    assert res.exit_code == 0, res.output
    built = json.loads((data / "dr16/shards/build-report.json").read_text())
    rows = shard_ids(data / "dr16/shards")
    rejected = {r["specobjid"] for r in built["rejected"]}
    assert sorted(set(rows) | rejected, key=int) == want and not set(rows) & rejected
    csv_rows = {r["SPECOBJID"]: r for r in sample_rows()}  # RA/DEC = HDU 2's PLUG_RA/PLUG_DEC
    for sid, row in rows.items():
        r = csv_rows[sid]
        assert (row["plate"], row["mjd"], row["fiberid"]) == (
            int(r["PLATE"]), int(r["MJD"]), int(r["FIBERID"])
        )  # fmt: skip
        assert abs(row["ra"] - float(r["RA"])) < 1e-6 and abs(row["dec"] - float(r["DEC"])) < 1e-6


def _qso_manifest(base: str, tmp_path: Path) -> Path:
    """``base``'s manifest selecting quasars (one value changed; line list path made absolute)."""
    src = load_release(base).manifest_path
    text = src.read_text().replace('class = "GALAXY"', 'class = "QSO"')
    text = text.replace('line_list = "lines/', f'line_list = "{src.parent}/lines/')
    path = tmp_path / f"{base}-qso.toml"
    path.write_text(text.replace(f'name = "{base}"', f'name = "{base}-qso"'))
    return path


def test_spall_id_above_2_63_survives_to_the_shards(tmp_path):
    manifest = _qso_manifest("dr17", tmp_path)
    release = load_release(manifest)
    table = spall_table(signed_ids=True).write(tmp_path / "spAll.fits")  # ids >= 2**63 negative
    want = [i for i in expected_ids(table, release.selection) if int(i) > 2**63]
    assert want  # plate 9403's quasar (z 0.48)
    data = tmp_path / "DATA"
    with ArchiveMirror(SAMPLE_SDSS, release) as mirror:
        res = _cli("fetch", "--release", str(manifest), "--data-dir", str(data),
                   "--catalog", str(table), "--base-url", mirror.base_url)  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads((data / "dr17-qso/fetch-report.json").read_text())
    assert report["selected"] == report["downloaded"] == 3  # the v5_13_2 quasars at z <= 0.5
    res = _cli("build-shards", "--release", str(manifest), "--data-dir", str(data),
               "--workers", "1")  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = shard_ids(data / "dr17-qso/shards")
    for sid in want:
        assert sid in rows and int(sid) > 2**63


# --- bad catalogues are errors -------------------------------------------------------------------


def test_header_only_csv_without_the_columns_fails_naming_them(tmp_path):
    path = tmp_path / "abc.csv"
    path.write_text("a,b,c\n")
    res = _cli("fetch", "--data-dir", str(tmp_path / "D"), "--catalog", str(path))
    assert res.exit_code != 0 and "Traceback" not in res.output
    msg = res.output.strip().splitlines()[-1]
    assert "missing column(s) SPECOBJID, PLATE, MJD, FIBERID" in msg
    assert "SPECPRIMARY (or SCIENCEPRIMARY)" in msg and "the table has: a, b, c" in msg
    assert not (tmp_path / "D/dr16/catalog.fits").exists()


def test_real_header_without_rows_and_a_fits_without_rows_are_errors(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text(SAMPLE_CATALOG.read_text().splitlines()[0] + "\n")
    release = load_release("dr16")
    with pytest.raises(CatalogError, match="selects nothing: the table has no rows"):
        build_catalog(release, tmp_path / "D", str(path))
    table = specobj_table()
    table.rows = table.rows[:0]
    empty = table.write(tmp_path / "empty.fits")
    with pytest.raises(CatalogError, match="selects nothing: the table has no rows"):
        build_catalog(release, tmp_path / "D", str(empty))


def test_a_fits_lacking_a_column_names_it_and_what_it_has(tmp_path):
    table = specobj_table()
    i = table.column_index("ZWARNING")
    table.header[f"TTYPE{i}"] = "ZWARN"  # the real table with one column renamed
    path = table.write(tmp_path / "renamed.fits")
    with pytest.raises(CatalogError, match=r"missing column\(s\) ZWARNING; the table has: .*ZWARN"):
        build_catalog(load_release("dr16"), tmp_path / "D", str(path))


def _write_rows(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.mark.parametrize(
    ("keep", "cut"),
    [
        (lambda r: r["CLASS"] == "STAR", "class == GALAXY"),
        (lambda r: r["CLASS"] == "GALAXY" and float(r["Z"]) > 0.5, "0 < z <= 0.5"),
        (lambda r: r["CLASS"] == "GALAXY" and r["SCIENCEPRIMARY"] == "0", "science primary"),
    ],
    ids=["class", "redshift", "science-primary"],
)
def test_cuts_that_leave_nothing_name_the_cut_and_exit_nonzero(tmp_path, keep, cut):
    rows = [r for r in sample_rows() if keep(r)]  # real rows that one cut empties
    path = _write_rows(tmp_path / "rows.csv", rows)
    res = _cli("fetch", "--data-dir", str(tmp_path / "D"), "--catalog", str(path))
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert f"the cut '{cut}' removed the last" in res.output, res.output
    assert not (tmp_path / "D/dr16/catalog.fits").exists()


def test_specprimary_and_scienceprimary_together(tmp_path):
    release = load_release("dr16")
    rows = sample_rows()
    same = [dict(r, SPECPRIMARY=r["SCIENCEPRIMARY"]) for r in rows]
    cat, _ = build_catalog(release, tmp_path / "D", str(_write_rows(tmp_path / "a.csv", same)))
    alone, _ = build_catalog(release, tmp_path / "E", str(SAMPLE_CATALOG))
    assert cat["SPECOBJID"].tolist() == alone["SPECOBJID"].tolist()
    flipped = [dict(r, SPECPRIMARY=str(1 - int(r["SCIENCEPRIMARY"]))) for r in rows]
    with pytest.raises(CatalogError, match=r"SPECPRIMARY and SCIENCEPRIMARY disagree on 177 row"):
        build_catalog(release, tmp_path / "F", str(_write_rows(tmp_path / "b.csv", flipped)))


def test_v1_shards_stay_readable(tmp_path):
    """A shard written by format v1 (uint64 ids, int32 plate/mjd/fiberid) reads as before."""
    import h5py

    from shardio import V1_DATASETS, row_datasets

    ids = np.array([2**63 + 2**50, 299489676975171584], dtype=np.uint64)
    with h5py.File(tmp_path / "v1.h5", "w") as h5:
        h5.attrs.update({"format": "specetl-shard", "format_version": 1})
        for name, dtype in V1_DATASETS.items():
            shape = (2, 4) if name in ("flux", "ivar") else (2,)
            h5.create_dataset(name, data=np.ones(shape, dtype=dtype))
        h5["specobjid"][:] = ids
        h5.create_dataset("wave_obs", data=np.arange(4.0))
    got = read_shard(tmp_path / "v1.h5")
    assert got["specobjid"].tolist() == ids.tolist() and got["plate"].dtype == np.int32
    assert set(row_datasets(got["attrs"])) == set(V1_DATASETS)


def test_a_catalogue_without_a_primary_flag_reads_back_as_written(tmp_path):
    """Real rows without their SCIENCEPRIMARY column: the flag is -1 ("the source has none") in
    the catalogue fetch writes, and stays -1 when that catalogue is read back (it read as 1)."""
    from etl.catalog import as_catalog, read_catalog, write_catalog

    rows = [
        {k: v for k, v in r.items() if k not in ("SCIENCEPRIMARY", "path")} for r in sample_rows()
    ]
    columns = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    for name in ("Z", "Z_ERR", "PLUG_RA", "PLUG_DEC"):
        if name in columns:
            columns[name] = columns[name].astype(float)
    for name in ("PLATE", "MJD", "FIBERID", "ZWARNING"):
        columns[name] = columns[name].astype(int)
    cat = as_catalog(columns, "real rows without a primary flag")
    assert set(cat["SPECPRIMARY"].tolist()) == {-1}
    write_catalog(cat, tmp_path / "catalog.fits")
    back = read_catalog(tmp_path / "catalog.fits")
    assert back["SPECPRIMARY"].tolist() == cat["SPECPRIMARY"].tolist()
    flagged = dict(
        columns, SCIENCEPRIMARY=np.array([int(r["SCIENCEPRIMARY"]) for r in sample_rows()])
    )
    cat = as_catalog(flagged, "real rows")
    write_catalog(cat, tmp_path / "flagged.fits")
    assert (
        read_catalog(tmp_path / "flagged.fits")["SPECPRIMARY"].tolist()
        == cat["SPECPRIMARY"].tolist()
    )
    assert set(cat["SPECPRIMARY"].tolist()) == {0, 1}
