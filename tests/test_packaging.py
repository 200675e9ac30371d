"""Packaging (issue 14): our pyproject.toml builds without warnings, the wheel carries the release
manifests and the bundled sample, an installed wheel works from any folder, and `make setup`
names the missing Debian package instead of failing with a traceback.

The build runs setuptools' PEP 517 hooks in a subprocess on a copy of the checkout's files (what
a clean clone holds), so nothing is written into the checkout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent

# Runs PEP 517 hooks of setuptools.build_meta in the current folder and records every warning
# they emit (pip shows each one to the user as a BuildBackendWarning).
_HOOKS = r"""
import json, sys, warnings
import setuptools, setuptools.build_meta as backend, setuptools.warnings
out, report, hooks = sys.argv[1], sys.argv[2], sys.argv[3:]
results = {}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for hook in hooks:
        if hook.startswith("get_requires"):
            results[hook] = getattr(backend, hook)()
        else:
            results[hook] = getattr(backend, hook)(out)
with open(report, "w") as f:
    json.dump({
        "setuptools": setuptools.__version__,
        "results": results,
        # InformationOnly is setuptools' note on every editable install ("folders named like
        # your package may take precedence"), not about our metadata.
        "warnings": [
            f"{w.category.__name__}: {w.message}"
            for w in caught
            if not issubclass(w.category, setuptools.warnings.InformationOnly)
        ],
    }, f)
"""


def _source_files() -> list[str]:
    """Files a clean clone of the checkout holds (plus new files not yet committed)."""
    proc = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    )
    names = [n for n in proc.stdout.decode().split("\0") if n]
    return [n for n in names if (REPO / n).is_file()]  # a deletion not yet committed


def _run_hooks(project: Path, out: Path, *hooks: str) -> dict:
    report = out / f"hooks-{hooks[-1]}.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", _HOOKS, str(out), str(report), *hooks],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(report.read_text())


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """Build the wheel and the editable wheel from a copy of the checkout; return the paths and
    the backend's report (the sdist route, 15 s of gzip, is left to the slow install test)."""
    tmp = tmp_path_factory.mktemp("dist")
    src, out = tmp / "src", tmp / "out"
    files = _source_files()
    for name in files:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, src / name)
    out.mkdir()
    report = _run_hooks(
        src,
        out,
        "get_requires_for_build_wheel",
        "prepare_metadata_for_build_wheel",
        "build_wheel",
        "get_requires_for_build_editable",  # what `make setup` runs (pip install -e)
        "prepare_metadata_for_build_editable",
        "build_editable",
    )
    return {
        "src": src,
        "files": files,
        "wheel": out / report["results"]["build_wheel"],
        "reports": [report],
    }


@pytest.mark.slow
def test_build_backend_warns_nothing(dist):
    """Any warning the build backend emits for our pyproject.toml fails the suite, before the
    deprecation it announces (e.g. a license table, removed 2027-Feb-18) breaks `pip install`."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    (floor,) = [
        int(m.group(1))
        for r in pyproject["build-system"]["requires"]
        if (m := re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", r))
    ]
    for report in dist["reports"]:
        # the check speaks for the setuptools a fresh `make setup` gets: at least our floor
        assert int(report["setuptools"].split(".")[0]) >= floor
        assert report["warnings"] == [], "\n".join(report["warnings"])


@pytest.mark.slow
def test_wheel_metadata_has_spdx_license(dist):
    with zipfile.ZipFile(dist["wheel"]) as whl:
        (metadata,) = [n for n in whl.namelist() if n.endswith(".dist-info/METADATA")]
        text = whl.read(metadata).decode()
        assert "License-Expression: MIT" in text.splitlines()
        assert "License-File: LICENSE" in text.splitlines()
        licence = metadata.replace("METADATA", "licenses/LICENSE")
        assert whl.read(licence) == (REPO / "LICENSE").read_bytes()


@pytest.mark.slow
def test_wheel_ships_manifests_sample_and_code(dist):
    """Every file of data_manifests/ and sample/ (whatever new releases and files they gain)
    and every module rides in the wheel, at the same place relative to the code as in the
    checkout, which is where etl.release and the demo look for them."""
    wanted = {
        n
        for n in dist["files"]
        if n.startswith(("data_manifests/", "sample/"))
        or ("/" in n and (REPO / n.split("/")[0] / "__init__.py").is_file())  # every package
        or ("/" not in n and n.endswith(".py"))  # cli.py and any module beside it (py-modules)
    }
    assert "cli.py" in wanted
    # the packages of the house: the ETL with its synthetic stand-ins, the model, the shard
    # format both use, and the orchestration (the demo's population path lives in the package)
    for module in (
        "etl/synthetic/population_corpus.py",
        "model/interpretability.py",
        "shardio/format.py",
        "workflows/demo.py",
    ):
        assert module in wanted, module
    assert any(n.startswith("sample/sdss/") for n in wanted)  # the copy saw the real sample
    assert any(n.startswith("data_manifests/lines/") for n in wanted)
    with zipfile.ZipFile(dist["wheel"]) as whl:
        shipped = set(whl.namelist())
        missing = sorted(wanted - shipped)
        assert not missing, f"{len(missing)} file(s) not in the wheel, e.g. {missing[:5]}"
        for name in sorted(wanted)[:: max(1, len(wanted) // 20)]:
            assert whl.read(name) == (REPO / name).read_bytes(), name


def _clean_env() -> dict[str, str]:
    """The environment without anything that could put the checkout on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


@pytest.mark.slow
def test_installed_wheel_works_from_any_folder(dist, tmp_path):
    """`pip install` of the wheel into a fresh venv, then specetl from a folder outside the
    checkout: the manifests, the sky lines and the sample must come from the installed package.

    To stay within minutes the fresh venv borrows the test environment's third-party packages
    through a .pth line (a plain path: .pth files there, such as an editable install of this
    checkout, are not processed), and the wheel is installed with --no-deps. The test asserts
    that specetl's code and data are imported from the fresh venv and that no path of the
    checkout is on its sys.path.
    """
    # the way `python -m build` and `pip install <sdist>` go: sdist, then a wheel from it
    out = tmp_path / "dist"
    out.mkdir()
    from_source = _run_hooks(dist["src"], out, "get_requires_for_build_sdist", "build_sdist")
    assert from_source["warnings"] == [], "\n".join(from_source["warnings"])
    sdist = out / from_source["results"]["build_sdist"]
    with tarfile.open(sdist) as tar:
        # the "data" filter exists from 3.10.12/3.11.4 on; the archive is our own either way
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(tmp_path / "unpacked", **safe)
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    from_sdist = _run_hooks(unpacked, out, "get_requires_for_build_wheel", "build_wheel")
    assert from_sdist["warnings"] == [], "\n".join(from_sdist["warnings"])
    wheel = out / from_sdist["results"]["build_wheel"]
    with zipfile.ZipFile(wheel) as a, zipfile.ZipFile(dist["wheel"]) as b:
        assert sorted(a.namelist()) == sorted(b.namelist())  # the sdist lacks nothing

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False, symlinks=os.name != "nt")
    python = env_dir / "bin" / "python"
    site_dir = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    deps = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site_dir / "_specetl_test_deps.pth").write_text("\n".join(deps) + "\n")
    env = _clean_env()
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install"]
    proc = subprocess.run(
        [*pip, "--no-deps", "--no-index", str(wheel)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            args, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=timeout
        )

    where = run(
        str(python),
        "-c",
        "import json, sys, cli, etl, etl.release as r; print(json.dumps("
        "[sys.path, cli.__file__, etl.__file__, str(r.load_release('dr16').telluric.line_list)]))",
    )
    assert where.returncode == 0, where.stderr[-3000:]
    sys_path, *used = json.loads(where.stdout)
    repo = str(REPO.resolve())
    # the dependencies' site-packages may live inside the checkout (make setup's .venv): only
    # those are allowed there; nothing else of the checkout may be on the path
    dep_dirs = {os.path.realpath(d) for d in deps}
    inside = [os.path.realpath(p) for p in sys_path if p]
    assert not [p for p in inside if p.startswith(repo) and p not in dep_dirs], sys_path
    for path in used:
        assert Path(path).resolve().is_relative_to(site_dir.resolve()), path

    specetl = str(env_dir / "bin" / "specetl")
    helped = run(specetl, "--help")
    assert helped.returncode == 0 and "build-shards" in helped.stdout, helped.stderr[-3000:]
    version = run(specetl, "--version")  # read from the installed distribution's metadata
    expected = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert version.returncode == 0 and expected in version.stdout, version.stderr[-3000:]

    # The command of the issue: a manifest by name, a catalogue of real rows from the installed
    # sample; --dry-run selects and writes the catalogue, downloads nothing.
    sample_csv = site_dir / "sample" / "catalog.csv"
    dry = run(
        specetl, "fetch", "--release", "dr16", "--data-dir", "data", "--catalog", str(sample_csv),
        "--limit", "3", "--dry-run",
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert (elsewhere / "data" / "dr16" / "catalog.fits").is_file()

    # The demo on the installed sample, one epoch: loopback archive → fetch → build → train → eval;
    # with the population extra (this environment has it) the science part comes from the
    # installed package too: a small SYNTHETIC population, Table 1 on it, the interpretability
    demo = run(
        specetl, "demo", "--out", "demo", "--epochs", "1", "--workers", "1",
        "--population", "200", timeout=900,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stderr[-3000:]
    report = json.loads((elsewhere / "demo" / "data" / "dr16" / "fetch-report.json").read_text())
    assert report["selected"] > 0 and report["downloaded"] == report["selected"]
    assert (elsewhere / "demo" / "runs" / "consistency" / "eval-test" / "metrics.json").is_file()
    assert "Table 1 on the SYNTHETIC population's test split" in demo.stdout, demo.stderr[-3000:]
    assert "What the 2-D latents know" in demo.stdout
    assert "python -m etl.synthetic population" in demo.stderr  # a command the wheel can run
    assert (elsewhere / "demo" / "population" / "dr16" / "shards" / "index.json").is_file()


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make (the README's prerequisite)")
def test_make_setup_names_python3_venv_when_venv_is_missing(tmp_path):
    """A python whose ensurepip is missing (as on Debian/Ubuntu without python3-venv): `make
    setup` stops before creating the venv with a one-line hint, not a traceback."""
    shadow = tmp_path / "shadow"
    (shadow / "ensurepip").mkdir(parents=True)
    # PYTHONPATH precedes the standard library, so this stands in for the absent module.
    (shadow / "ensurepip" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'ensurepip'\")\n"
    )
    debian_python = tmp_path / "python3"
    debian_python.write_text(f'#!/bin/sh\nPYTHONPATH={shadow} exec {sys.executable} "$@"\n')
    debian_python.chmod(0o755)
    target = tmp_path / "venv"

    def make(python: Path | str, goal: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["make", "-s", "-C", str(REPO), goal, f"PYTHON={python}", f"VENV={target}"],
            capture_output=True,
            text=True,
            timeout=60,
        )

    failed = make(debian_python, "setup")
    assert failed.returncode != 0
    assert "sudo apt install python3-venv" in failed.stderr
    assert "Traceback" not in failed.stderr + failed.stdout
    assert not target.exists()
    # the same check passes for the interpreter running the tests (it has venv and ensurepip)
    ok = make(sys.executable, "check-python")
    assert ok.returncode == 0, ok.stderr
