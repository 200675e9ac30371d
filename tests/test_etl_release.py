"""Release manifests: strict loading and the URL template of every reduction."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from etl.release import ManifestError, UnknownRun2d, load_release, spec_lite_relpath

# A real legacy galaxy of the bundled sample (plate 266, MJD 51602, fibre 1).
KNOWN = dict(plate=266, mjd=51602, fiberid=1)
NAME = "spec-0266-51602-0001.fits"


@pytest.mark.parametrize(
    ("release", "run2d", "expected"),
    [
        (
            "dr16",
            "26",
            f"https://data.sdss.org/sas/dr16/sdss/spectro/redux/26/spectra/lite/0266/{NAME}",
        ),
        (
            "dr16",
            "103",
            f"https://data.sdss.org/sas/dr16/sdss/spectro/redux/103/spectra/lite/0266/{NAME}",
        ),
        (
            "dr16",
            "104",
            f"https://data.sdss.org/sas/dr16/sdss/spectro/redux/104/spectra/lite/0266/{NAME}",
        ),
        (
            "dr16",
            "v5_13_0",
            f"https://data.sdss.org/sas/dr16/eboss/spectro/redux/v5_13_0/spectra/lite/0266/{NAME}",
        ),
        (
            "dr17",
            "26",
            f"https://data.sdss.org/sas/dr17/sdss/spectro/redux/26/spectra/lite/0266/{NAME}",
        ),
        (
            "dr17",
            "103",
            f"https://data.sdss.org/sas/dr17/sdss/spectro/redux/103/spectra/lite/0266/{NAME}",
        ),
        (
            "dr17",
            "104",
            f"https://data.sdss.org/sas/dr17/sdss/spectro/redux/104/spectra/lite/0266/{NAME}",
        ),
        (
            "dr17",
            "v5_13_2",
            f"https://data.sdss.org/sas/dr17/eboss/spectro/redux/v5_13_2/spectra/lite/0266/{NAME}",
        ),
    ],
)
def test_every_template_on_a_known_object(release, run2d, expected):
    assert load_release(release).spec_lite_url(run2d, **KNOWN) == expected


def test_both_manifests_have_exactly_their_reductions(dr16, dr17):
    assert set(dr16.run2ds) == {"26", "103", "104", "v5_13_0"}
    assert set(dr17.run2ds) == {"26", "103", "104", "v5_13_2"}
    assert dr16.catalog.data_release == 16 and dr17.catalog.data_release == 17
    assert (
        dr16.specobj_url() == "https://data.sdss.org/sas/dr16/sdss/spectro/redux/specObj-dr16.fits"
    )
    assert (
        dr17.specobj_url() == "https://data.sdss.org/sas/dr17/sdss/spectro/redux/specObj-dr17.fits"
    )
    # an object keeps its split across releases only if the salt is shared
    assert dr16.splits == dr17.splits


def test_manifest_values(dr16):
    assert (dr16.grid.loglam0, dr16.grid.dloglam, dr16.grid.npix) == (3.578, 1e-4, 3921)
    wave = dr16.grid.wave_obs
    assert wave[0] == pytest.approx(3784.43, abs=0.01) and wave[-1] == pytest.approx(
        9332.54, abs=0.01
    )
    assert np.allclose(np.diff(np.log10(wave)), 1e-4)
    s = dr16.selection
    assert (
        s.class_,
        s.z_min,
        s.z_max,
        s.z_err_min,
        s.z_err_max,
        s.zwarning,
        s.science_primary,
    ) == ("GALAXY", 0.0, 0.5, 0.0, 1e-4, 0, True)
    assert (dr16.telluric.top_n, dr16.telluric.half_width) == (100, 5.0)
    assert (dr16.normalisation.restframe_min, dr16.normalisation.restframe_max) == (5300.0, 5850.0)
    assert (dr16.splits.train, dr16.splits.valid, dr16.splits.test) == (0.70, 0.15, 0.15)
    assert dr16.shards.shard_size == 4096
    with pytest.raises(dataclasses.FrozenInstanceError):
        dr16.grid.npix = 4000


def test_base_url_replaces_the_archive_root(dr16):
    url = dr16.spec_lite_url("26", **KNOWN, base_url="http://127.0.0.1:8080/mirror/")
    assert (
        url == f"http://127.0.0.1:8080/mirror/dr16/sdss/spectro/redux/26/spectra/lite/0266/{NAME}"
    )
    assert dr16.specobj_url("file:///data/sas").startswith("file:///data/sas/dr16/")


def test_unknown_run2d_is_an_error_not_a_guess(dr16):
    with pytest.raises(UnknownRun2d, match="v5_13_2.*not in the dr16"):
        dr16.spec_lite_url("v5_13_2", **KNOWN)


@pytest.mark.parametrize(
    "bad",
    [
        ("../x", 1, 1, 1),
        ("26", -1, 1, 1),
        ("26", 1, "1; rm", 1),
        ("26", 1, 1, 2.5),
        ("a/b", 1, 1, 1),
    ],
)
def test_paths_come_only_from_validated_ids(bad):
    with pytest.raises(ValueError):
        spec_lite_relpath(*bad)


def _rewrite(tmp_path, text_from, text_to):
    src = load_release("dr16").manifest_path
    text = src.read_text()
    assert text_from in text
    dst = tmp_path / "dr16.toml"
    dst.write_text(text.replace(text_from, text_to, 1))
    (tmp_path / "lines").symlink_to(src.parent / "lines")
    return dst


def test_unknown_key_is_named(tmp_path):
    path = _rewrite(tmp_path, "top_n = 100", "top_n = 100\nhalfwidth = 4.0")
    with pytest.raises(ManifestError, match=r"unknown key telluric\.halfwidth") as err:
        load_release(path)
    assert str(path) in str(err.value)


def test_missing_key_is_named(tmp_path):
    path = _rewrite(tmp_path, "zwarning = 0\n", "")
    with pytest.raises(ManifestError, match=r"missing key selection\.zwarning"):
        load_release(path)


def test_wrong_type_is_named(tmp_path):
    path = _rewrite(tmp_path, "npix = 3921", 'npix = "3921"')
    with pytest.raises(ManifestError, match=r"grid\.npix must be int"):
        load_release(path)


def test_unknown_release_lists_known_ones():
    with pytest.raises(ManifestError, match="known: .*dr16.*dr17"):
        load_release("dr99")


@pytest.mark.parametrize(
    ("text_from", "text_to", "message"),
    [
        ("derived = {}", 'derived = { plate_group = "eval(plate)" }', r"is not '<field> // "),
        ("derived = {}", 'derived = { g = "field // 1000" }', r"uses 'field', not a key field"),
        ("derived = {}", 'derived = { g = "plate // 0" }', r"is not '<field> // <positive"),
        (
            "{plate:04d}/spec-",
            "{plate:04d}/{tile}/spec-",
            r"object\.path uses unknown field \{tile\}",
        ),
        ('-{fiberid:04d}.fits"\n', '-0001.fits"\n', r"object\.path lacks key field \{fiberid\}"),
        ('path = "{plate', 'path = "../{plate', r"relative path to a \.fits file"),
        ('key = ["plate", "mjd", "fiberid"]', 'key = ["Plate", "mjd", "fiberid"]', "lower-case"),
        ("lite/{path}", "lite/{plate}", r"spec_lite\.26 lacks \{path\}"),
    ],
)
def test_object_layout_errors_are_named(tmp_path, text_from, text_to, message):
    path = _rewrite(tmp_path, text_from, text_to)
    with pytest.raises(ManifestError, match=message):
        load_release(path)


def test_derived_field_and_key_by_name(tmp_path):
    path = _rewrite(
        tmp_path, 'path = "{plate:04d}/spec-', 'path = "{group:02d}XX/{plate:04d}/spec-'
    )
    path.write_text(
        path.read_text().replace("derived = {}", 'derived = { group = "plate // 100" }')
    )
    release = load_release(path)
    rel = release.spec_lite_relpath("26", plate=266, mjd=51602, fiberid=1)
    assert rel.as_posix() == f"26/02XX/0266/{NAME}"
    assert release.spec_lite_url("26", 266, 51602, 1).endswith(f"/lite/02XX/0266/{NAME}")
    with pytest.raises(ValueError, match="an object key is"):
        release.spec_lite_relpath("26", 266, 51602)
