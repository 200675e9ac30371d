"""Every command with a table of bad inputs, as a new user would try them.

Each case runs `specetl` in a fresh folder (its working directory) and asserts what the README
promises for input a user can get wrong: exactly one error line, no traceback, a non-zero exit,
the cause named (a fragment of the message), and no file created outside the folders the
command was told to write (nothing at all for a refused command), nor any change to the shared
real fixtures (shards, run, embedding built once from the bundled sample).

The fixtures are real: shards of the bundled SDSS galaxies, a one-epoch fidelity run on them,
its embedding, "shards of another grid" (the same real rows cut to 3500 pixels), a PNG of docs/
renamed .csv, the release manifests of data_manifests/ edited one value at a time.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import pytest
from click.testing import CliRunner
from test_model_fixtures import build_sample_shards

from cli import main

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "data_manifests"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
#: how the error line names the read-only folder of read_only()
READ_ONLY = "/sys" if IS_ROOT else "read-only"


# --- fixtures: real shards, a real run, its embedding, shards of another grid ----------------


def _other_grid(shards: Path, out: Path, npix: int = 3500) -> Path:
    """The same real rows cut to `npix` pixels: shards of another grid, index and all."""
    from shardio import sha256_file

    index = json.loads((shards / "index.json").read_text())
    for entry in index["shards"]:
        src, dst = shards / entry["path"], out / entry["path"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(src, "r") as f, h5py.File(dst, "w") as g:
            for name, ds in f.items():
                data = ds[:]
                g[name] = data[..., :npix] if name in ("flux", "ivar", "wave_obs") else data
            for k, v in f.attrs.items():
                g.attrs[k] = v
            g.attrs["npix"] = npix
        entry["sha256"] = sha256_file(dst)
    index["npix"] = npix
    (out / "index.json").write_text(json.dumps(index, indent=1))
    return out


@dataclass
class World:
    root: Path
    shards: Path
    run: Path
    other_grid: Path
    embedding: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    from model.embed import embed_shards
    from model.train import TrainConfig, train

    root = tmp_path_factory.mktemp("bad-input-world")
    shards = build_sample_shards(root, n_train_shards=1)
    run = root / "run"
    train(
        TrainConfig(
            shards=str(shards),
            run=str(run),
            epochs=1,
            batch_size=8,
            seed=1,
            progress=False,
            device="cpu",
        )
    )
    other = _other_grid(shards, root / "other-grid" / "shards")
    emb = embed_shards(run, root / "embedding.fits", device="cpu", batch_size=64)
    return World(root, shards, run, other, emb)


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for p in root.rglob("*"):
        if p.is_file():
            st = p.stat()
            out[p.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns)
    return out


# --- inputs a case builds in its own folder ----------------------------------------------------


def manifest(folder: Path, edit: Callable[[str], str], name: str = "bad.toml") -> str:
    """A copy of dr16.toml, edited; its line list is copied beside it (a relative path)."""
    text = (MANIFESTS / "dr16.toml").read_text()
    (folder / "lines").mkdir(exist_ok=True)
    for f in (MANIFESTS / "lines").iterdir():
        shutil.copy(f, folder / "lines" / f.name)
    path = folder / name
    path.write_text(edit(text))
    return str(path)


def rename(text: str, new: str) -> str:
    out, done = [], False
    for line in text.splitlines():
        if not done and line.strip().startswith("name") and "=" in line:
            line, done = f'name = "{new}"', True
        out.append(line)
    assert done
    return "\n".join(out) + "\n"


def png_as_csv(folder: Path) -> str:
    path = folder / "catalog.csv"
    shutil.copy(REPO / "docs" / "training.png", path)
    return str(path)


def csv_without(folder: Path, drop: set[str]) -> str:
    """sample/catalog.csv without the columns in `drop` (real rows)."""
    lines = (REPO / "sample" / "catalog.csv").read_text().splitlines()
    head = lines[0].split(",")
    keep = [i for i, h in enumerate(head) if h not in drop]
    path = folder / "cut.csv"
    path.write_text("\n".join(",".join(r.split(",")[i] for i in keep) for r in lines[:20]) + "\n")
    return str(path)


def csv_bad_run2d(folder: Path) -> str:
    """Real rows whose RUN2D says '../../x': a name that would become a path."""
    lines = (REPO / "sample" / "catalog.csv").read_text().splitlines()
    head = lines[0].split(",")
    i = head.index("RUN2D")
    rows = [r.split(",") for r in lines[1:]]
    col = {h: j for j, h in enumerate(head)}
    rows = [
        r
        for r in rows
        if r[col["CLASS"]] == "GALAXY"
        and r[col["SCIENCEPRIMARY"]] == "1"
        and r[col["ZWARNING"]] == "0"
    ][:3]
    for r in rows:
        r[i] = "../../x"
    path = folder / "run2d.csv"
    path.write_text("\n".join([lines[0], *(",".join(r) for r in rows)]) + "\n")
    return str(path)


def a_file(folder: Path, name: str = "plain-file") -> str:
    path = folder / name
    path.write_text("not a folder\n")
    return str(path)


def read_only(folder: Path) -> str:
    """A folder this process may not write: a mode 555 one, or /sys for root (whom modes do
    not stop; sysfs refuses new files even to root)."""
    if IS_ROOT:
        return "/sys"
    path = folder / "read-only"
    path.mkdir()
    path.chmod(0o555)
    return str(path)


def run_copy(world: World, folder: Path, edit: Callable[[dict], None] | None = None) -> str:
    """A copy of the trained run with its config.json (and checkpoints' config) edited."""
    import torch

    run = folder / "run-copy"
    shutil.copytree(world.run, run)
    for ckpt_path in (run / "best.pt", run / "last.pt"):
        if ckpt_path.exists() and edit is not None:
            ckpt = torch.load(ckpt_path, weights_only=True)
            edit(ckpt)
            ckpt_path.unlink()  # best.pt and last.pt may be one file (a hard link)
            torch.save(ckpt, ckpt_path)
    if edit is not None and edit is not nan_weights:
        cfg = json.loads((run / "config.json").read_text())
        probe = {"config": cfg["train"]}
        edit(probe)
        cfg["train"] = probe["config"]
        (run / "config.json").write_text(json.dumps(cfg))
    return str(run)


def garbage_run(folder: Path) -> str:
    (folder / "r").mkdir()
    (folder / "r" / "best.pt").write_bytes(b"x" * 100)
    return str(folder / "r")


def nan_weights(ckpt: dict) -> None:
    for v in ckpt["model"].values():
        if v.is_floating_point():
            v.fill_(float("nan"))


def relative_shards(ckpt: dict) -> None:
    ckpt["config"]["shards"] = "demo-out/population/dr16/shards"


def changed_shards(world: World, folder: Path) -> str:
    """A run whose recorded shards are a copy that then changed (a shard entry removed)."""
    shards = folder / "shards"
    shutil.copytree(world.shards, shards)

    def point(ckpt: dict) -> None:
        ckpt["config"]["shards"] = str(shards)

    run = run_copy(world, folder, point)
    index = json.loads((shards / "index.json").read_text())
    index["shards"] = [e for e in index["shards"] if e["split"] != "valid"]
    (shards / "index.json").write_text(json.dumps(index))
    return run


def shards_without_release(world: World, folder: Path) -> str:
    shards = folder / "shards"
    shutil.copytree(world.shards, shards)
    index = json.loads((shards / "index.json").read_text())
    del index["release"]
    (shards / "index.json").write_text(json.dumps(index))
    return str(shards)


def embedding_edit(world: World, folder: Path, column: str, value: str) -> str:
    from astropy.io import fits

    path = folder / "edited.fits"
    with fits.open(world.embedding) as hdul:
        hdul = fits.HDUList([h.copy() for h in hdul])
    data = hdul[1].data
    if column in data.columns.names:
        data[column][:] = value
    else:
        hdul[1].header[column] = value
    hdul.writeto(path)
    return str(path)


def spec_file(*_: object) -> str:
    return str(next((REPO / "sample" / "sdss").rglob("spec-*.fits")))


# --- the table ---------------------------------------------------------------------------------

#: (id, argv builder (world, folder) -> list, fragment of the error line, folders it may write)
Case = tuple[str, Callable[[World, Path], list[str]], str]


def _c(name: str, argv: Callable[[World, Path], list[str]], says: str, **marks) -> object:
    return pytest.param(argv, says, id=name, marks=marks.get("marks", ()))


W, F = World, Path

CASES = [
    # fetch: manifests, names that become paths, catalogues, options
    _c(
        "fetch-release-name-escapes",
        lambda w, f: [
            "fetch",
            "--release",
            manifest(f, lambda t: rename(t, "../../name-escape")),
            "--data-dir",
            str(f / "a" / "b" / "data"),
            "--catalog",
            csv_without(f, set()),
        ],
        "release.name '../../name-escape' cannot name a folder",
    ),
    _c(
        "fetch-release-name-absolute",
        lambda w, f: [
            "fetch",
            "--release",
            manifest(f, lambda t: rename(t, str(f / "abs"))),
            "--data-dir",
            str(f / "data"),
        ],
        "cannot name a folder",
    ),
    _c(
        "fetch-release-name-hidden",
        lambda w, f: (
            ["fetch", "--release", manifest(f, lambda t: rename(t, ".."))]
            + ["--data-dir", str(f / "data")]
        ),
        "cannot name a folder",
    ),
    _c(
        "fetch-manifest-toml-syntax",
        lambda w, f: (
            ["fetch", "--release", manifest(f, lambda t: t + "\n[grid\n")]
            + ["--data-dir", str(f / "data")]
        ),
        "not valid TOML",
    ),
    _c(
        "fetch-manifest-unknown-key",
        lambda w, f: (
            ["fetch", "--release", manifest(f, lambda t: t + "\n[bogus]\nx = 1\n")]
            + ["--data-dir", str(f / "data")]
        ),
        "unknown key bogus",
    ),
    _c(
        "fetch-manifest-binary",
        lambda w, f: ["fetch", "--release", png_as_csv(f), "--data-dir", str(f / "data")],
        "not valid TOML",
    ),
    _c(
        "fetch-no-such-release",
        lambda w, f: ["fetch", "--release", "dr99", "--data-dir", str(f / "data")],
        "no manifest for release 'dr99'",
    ),
    _c(
        "fetch-catalog-png-renamed-csv",
        lambda w, f: ["fetch", "--data-dir", str(f / "data"), "--catalog", png_as_csv(f)],
        "not a readable CSV table",
    ),
    _c(
        "fetch-catalog-missing-file",
        lambda w, f: ["fetch", "--data-dir", str(f / "data"), "--catalog", str(f / "nope.csv")],
        "no such catalogue file",
    ),
    _c(
        "fetch-catalog-unknown-format",
        lambda w, f: ["fetch", "--data-dir", str(f / "data"), "--catalog", a_file(f, "t.xlsx")],
        "unknown table format",
    ),
    _c(
        "fetch-catalog-lacks-columns",
        lambda w, f: (
            ["fetch", "--data-dir", str(f / "data")] + ["--catalog", csv_without(f, {"Z", "PLATE"})]
        ),
        "PLATE",
    ),
    _c(
        "fetch-data-dir-is-a-file",
        lambda w, f: ["fetch", "--data-dir", a_file(f), "--catalog", csv_without(f, set())],
        "plain-file",
    ),
    _c(
        "fetch-limit-negative",
        lambda w, f: ["fetch", "--data-dir", str(f / "data"), "--limit", "-1"],
        "--limit",
    ),
    _c(
        "fetch-connections-zero",
        lambda w, f: ["fetch", "--data-dir", str(f / "data"), "--connections", "0"],
        "--connections",
    ),
    _c(
        "fetch-run2d-escapes",
        lambda w, f: (
            ["fetch", "--data-dir", str(f / "data"), "--catalog", csv_bad_run2d(f)]
            + ["--base-url", "file:///nonexistent"]
        ),
        "object(s) failed",
    ),
    _c(
        "fetch-read-only-data-dir",
        lambda w, f: ["fetch", "--data-dir", read_only(f), "--catalog", csv_without(f, set())],
        READ_ONLY,
    ),
    # build-shards
    _c(
        "build-release-name-escapes",
        lambda w, f: (
            ["build-shards", "--data-dir", str(f / "data")]
            + ["--release", manifest(f, lambda t: rename(t, "../escape"))]
        ),
        "cannot name a folder",
    ),
    _c(
        "build-nothing-fetched",
        lambda w, f: ["build-shards", "--data-dir", str(f / "data")],
        "catalog",
    ),
    _c(
        "build-shard-size-zero",
        lambda w, f: ["build-shards", "--data-dir", str(f / "data"), "--shard-size", "0"],
        "--shard-size",
    ),
    _c(
        "build-compression-bogus",
        lambda w, f: ["build-shards", "--data-dir", str(f / "data"), "--compression", "zip"],
        "--compression",
    ),
    # train
    *(
        _c(
            f"train-{option[2:]}-{name}",
            lambda w, f, o=option, v=value: (
                ["train", "--shards", str(w.shards), "--run", str(f / "r")] + [o, v]
            ),
            option,
        )
        for option, cases in (
            ("--lr", (("nan", "nan"), ("negative", "-1"), ("inf", "inf"), ("text", "x"))),
            ("--z-aug-max", (("nan", "nan"), ("zero", "0"), ("above-one", "1.5"))),
            ("--consistency-weight", (("nan", "nan"), ("inf", "inf"))),
            (
                "--decoder-mlp",
                (("zero", "64,0"), ("text", "64,x"), ("empty", ""), ("float", "1.5")),
            ),
        )
        for name, value in cases
    ),
    _c(
        "train-epochs-zero",
        lambda w, f: ["train", "--shards", str(w.shards), "--run", str(f / "r"), "--epochs", "0"],
        "--epochs",
    ),
    _c(
        "train-batch-size-zero",
        lambda w, f: (
            ["train", "--shards", str(w.shards), "--run", str(f / "r")] + ["--batch-size", "0"]
        ),
        "--batch-size",
    ),
    _c(
        "train-workers-negative",
        lambda w, f: (
            ["train", "--shards", str(w.shards), "--run", str(f / "r")] + ["--workers", "-1"]
        ),
        "--workers",
    ),
    _c(
        "train-shards-missing",
        lambda w, f: ["train", "--shards", str(f / "nope"), "--run", str(f / "r")],
        "does not exist",
    ),
    _c(
        "train-shards-without-index",
        lambda w, f: ["train", "--shards", str(f), "--run", str(f / "r")],
        "index.json",
    ),
    _c(
        "train-run-is-a-file",
        lambda w, f: ["train", "--shards", str(w.shards), "--run", a_file(f)],
        "plain-file",
    ),
    _c(
        "train-run-parent-is-a-file",
        lambda w, f: ["train", "--shards", str(w.shards), "--run", a_file(f) + "/run"],
        "plain-file",
    ),
    _c(
        "train-init-other-grid",
        lambda w, f: (
            ["train", "--shards", str(w.other_grid), "--run", str(f / "r")]
            + ["--init", str(w.run), "--epochs", "1"]
        ),
        "this model expects 3921 pixels",
    ),
    _c(
        "train-resume-nothing",
        lambda w, f: ["train", "--shards", str(w.shards), "--run", str(f / "r"), "--resume"],
        "--resume",
    ),
    _c(
        "train-existing-run",
        lambda w, f: ["train", "--shards", str(w.shards), "--run", run_copy(w, f)],
        "already holds a run",
    ),
    _c(
        "train-read-only-run",
        lambda w, f: ["train", "--shards", str(w.shards), "--run", read_only(f) + "/r"],
        READ_ONLY,
    ),
    # evaluate
    _c(
        "evaluate-device-bogus",
        lambda w, f: ["evaluate", "--run", str(w.run), "--device", "bogus"],
        "--device",
    ),
    _c(
        "evaluate-device-missing-gpu",
        lambda w, f: ["evaluate", "--run", str(w.run), "--device", "cuda:7"],
        "--device",
    ),
    _c(
        "evaluate-no-checkpoint",
        lambda w, f: ["evaluate", "--run", str(f)],
        "no checkpoint",
    ),
    _c(
        "evaluate-garbage-checkpoint",
        lambda w, f: ["evaluate", "--run", garbage_run(f)],
        "cannot load checkpoint",
    ),
    _c(
        "evaluate-other-grid",
        lambda w, f: (
            ["evaluate", "--run", str(w.run), "--shards", str(w.other_grid)]
            + ["--out", str(f / "eval")]
        ),
        "this model expects 3921 pixels, the shards in",
    ),
    _c(
        "evaluate-relative-shards-in-config",
        lambda w, f: ["evaluate", "--run", run_copy(w, f, relative_shards)],
        "relative path",
    ),
    _c(
        "evaluate-shards-changed",
        lambda w, f: ["evaluate", "--run", changed_shards(w, f)],
        "changed since",
    ),
    _c(
        "evaluate-all-nan",
        lambda w, f: ["evaluate", "--run", run_copy(w, f, nan_weights)],
        "not finite",
    ),
    _c(
        "evaluate-out-is-a-file",
        lambda w, f: ["evaluate", "--run", str(w.run), "--out", a_file(f)],
        "plain-file",
    ),
    _c(
        "evaluate-out-read-only",
        lambda w, f: ["evaluate", "--run", str(w.run), "--out", read_only(f) + "/e"],
        READ_ONLY,
    ),
    _c(
        "evaluate-stray-argument",
        lambda w, f: ["evaluate", str(w.run)],
        "did you mean --compare",
    ),
    _c(
        "evaluate-compare-missing",
        lambda w, f: ["evaluate", "--compare", str(w.run), str(f / "nope")],
        "does not exist",
    ),
    # embed
    _c(
        "embed-spectra-without-files",
        lambda w, f: ["embed", "--run", str(w.run), "--out", str(f / "e.fits"), "--spectra"],
        "--spectra needs at least one",
    ),
    _c(
        "embed-spectra-catalog-png",
        lambda w, f: (
            ["embed", "--run", str(w.run), "--out", str(f / "e.fits"), "--spectra"]
            + ["--catalog", png_as_csv(f), spec_file()]
        ),
        "not a readable CSV table",
    ),
    _c(
        "embed-spectra-not-fits",
        lambda w, f: (
            ["embed", "--run", str(w.run), "--out", str(f / "e.fits"), "--spectra"]
            + [a_file(f, "x.fits")]
        ),
        "none of the 1 spectra",
    ),
    _c(
        "embed-spectra-release-unknown",
        lambda w, f: (
            ["embed", "--run", str(w.run), "--out", str(f / "e.fits"), "--spectra"]
            + ["--shards", shards_without_release(w, f), spec_file()]
        ),
        "cannot tell its release",
    ),
    _c(
        "embed-other-grid",
        lambda w, f: (
            ["embed", "--run", str(w.run), "--out", str(f / "e.fits")]
            + ["--shards", str(w.other_grid)]
        ),
        "this model expects 3921 pixels",
    ),
    _c(
        "embed-out-parent-is-a-file",
        lambda w, f: (
            ["embed", "--run", str(w.run), "--out", a_file(f) + "/e.fits"] + ["--split", "test"]
        ),
        "plain-file",
    ),
    _c(
        "embed-out-read-only",
        lambda w, f: (
            ["embed", "--run", str(w.run), "--out", read_only(f) + "/e.fits"] + ["--split", "test"]
        ),
        READ_ONLY,
    ),
    _c(
        "embed-batch-size-zero",
        lambda w, f: (
            ["embed", "--run", str(w.run), "--out", str(f / "e.fits")] + ["--batch-size", "0"]
        ),
        "--batch-size",
    ),
    _c(
        "embed-device-bogus",
        lambda w, f: (
            ["embed", "--run", str(w.run), "--out", str(f / "e.fits")] + ["--device", "gpu0"]
        ),
        "--device",
    ),
    # explore
    _c(
        "explore-fits-not-an-embedding",
        lambda w, f: (
            ["explore", "--embedding", spec_file(), "--run", str(w.run)]
            + ["--out", str(f / "p.html")]
        ),
        "cannot read embedding",
    ),
    _c(
        "explore-csv-as-embedding",
        lambda w, f: (
            ["explore", "--embedding", csv_without(f, set()), "--run", str(w.run)]
            + ["--out", str(f / "p.html")]
        ),
        "cannot read embedding",
    ),
    _c(
        "explore-shard-cell-escapes",
        lambda w, f: (
            ["explore", "--embedding", embedding_edit(w, f, "SHARD", "../../x.h5")]
            + ["--run", str(w.run), "--out", str(f / "p.html")]
        ),
        "leaves",
    ),
    _c(
        "explore-relative-shards-header",
        lambda w, f: (
            ["explore", "--embedding", embedding_edit(w, f, "SHARDS", "shards")]
            + ["--run", str(w.run), "--out", str(f / "p.html")]
        ),
        "not an absolute path",
    ),
    _c(
        "explore-with-another-run",
        lambda w, f: (
            ["explore", "--embedding", str(w.embedding), "--run", run_copy(w, f, nan_weights)]
            + ["--out", str(f / "p.html")]
        ),
        "made by another checkpoint",
    ),
    _c(
        "explore-out-parent-is-a-file",
        lambda w, f: (
            ["explore", "--embedding", str(w.embedding), "--run", str(w.run)]
            + ["--out", a_file(f) + "/p.html", "--sample", "0", "--top", "1"]
        ),
        "plain-file",
    ),
    _c(
        "explore-out-read-only",
        lambda w, f: (
            ["explore", "--embedding", str(w.embedding), "--run", str(w.run)]
            + ["--out", read_only(f) + "/p.html", "--sample", "0", "--top", "1"]
        ),
        READ_ONLY,
    ),
    _c(
        "explore-top-zero",
        lambda w, f: (
            ["explore", "--embedding", str(w.embedding), "--run", str(w.run)]
            + ["--out", str(f / "p.html"), "--top", "0"]
        ),
        "--top",
    ),
    # demo
    _c(
        "demo-release-toml-syntax",
        lambda w, f: ["demo", "--out", str(f / "d"), "--release", manifest(f, lambda t: "[x")],
        "not valid TOML",
    ),
    _c(
        "demo-release-name-escapes",
        lambda w, f: (
            ["demo", "--out", str(f / "d")]
            + ["--release", manifest(f, lambda t: rename(t, "../../escape"))]
        ),
        "cannot name a folder",
    ),
    _c(
        "demo-population-negative",
        lambda w, f: ["demo", "--out", str(f / "d"), "--population", "-1"],
        "--population",
    ),
    _c(
        "demo-epochs-zero",
        lambda w, f: ["demo", "--out", str(f / "d"), "--epochs", "0"],
        "--epochs",
    ),
    _c(
        "demo-out-is-a-file",
        lambda w, f: ["demo", "--out", a_file(f), "--population", "0"],
        "plain-file",
    ),
    _c("unknown-command", lambda w, f: ["fetchh"], "No such command"),
]


@pytest.mark.parametrize(("argv", "says"), CASES)
def test_bad_input_is_one_line_and_nonzero(world, tmp_path, monkeypatch, argv, says):
    folder = tmp_path / "case"
    folder.mkdir()
    args = argv(world, folder)
    monkeypatch.chdir(folder)
    before, shared = _tree(tmp_path), _tree(world.root)
    result = CliRunner().invoke(main, args)
    out = result.output
    assert "Traceback" not in out, out
    assert result.exit_code != 0, out
    assert isinstance(result.exception, SystemExit), (result.exception, out)
    errors = [ln for ln in out.splitlines() if ln.startswith(("Error", "fetch: "))]
    assert len(errors) == 1, out
    assert says in errors[0], out
    # nothing created outside the folder it was told to write (case/data: fetch's --data-dir
    # with a run2d it refuses per object); a refused command creates nothing at all
    made = sorted(k for k in set(_tree(tmp_path)) - set(before) if not k.startswith("case/data/"))
    assert made == [], made
    changed = {k for k, v in _tree(world.root).items() if shared.get(k) != v}
    assert {k for k in changed if not k.startswith("run/eval-")} <= {"run/outliers.json"}, changed


def test_table_has_forty_cases():
    assert len(CASES) >= 40
