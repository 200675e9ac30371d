"""`.ci/import_check.py` (run by `make lint`): the house's import rules hold, and the checker
sees what it is for (a circle through a lazy import, a product module importing benchmarks)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _checker():
    spec = importlib.util.spec_from_file_location("import_check", REPO / ".ci" / "import_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_product_has_no_circular_or_forbidden_imports():
    assert _checker().problems() == []


def test_the_checker_finds_a_lazy_circle_and_a_benchmarks_import(tmp_path, monkeypatch):
    ic = _checker()
    (tmp_path / "etl").mkdir()
    (tmp_path / "etl" / "__init__.py").write_text("")
    (tmp_path / "etl" / "a.py").write_text("from etl.b import x\n")
    (tmp_path / "etl" / "b.py").write_text("def f():\n    from etl import a\n    import torch\n")
    (tmp_path / "etl" / "c.py").write_text("import population_corpus\nfrom benchmarks import t\n")
    for name in ("cli.py", "cli_support.py"):
        (tmp_path / name).write_text("")
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "population_corpus.py").write_text("")
    monkeypatch.setattr(ic, "ROOT", tmp_path)
    monkeypatch.setattr(ic, "PACKAGES", ("etl",))
    found = ic.problems()
    assert "circular import: etl.a <-> etl.b" in found
    assert any(line.startswith("etl/b.py: imports torch") for line in found)
    assert "etl/c.py: imports benchmarks (etl must not import benchmarks)" in found
    assert "etl/c.py: imports population_corpus (a script of benchmarks/ or tests/)" in found
    assert len(found) == 4, found
