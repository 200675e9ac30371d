"""The explorer page at its 100k-point limit: page size, load time, redraw time in Chromium.

THE DATA ARE SYNTHETIC: 150,000 made-up rows (random latents, scores, ids) and 200 flat
spectra, only to time the page; the map shows its 100,000-point sample. Needs chromium and
chromedriver (`make browser`). Usage: ``python benchmarks/explore_page.py [OUT.html]``
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.density import outlier_rank  # noqa: E402
from model.explore.page import choose_rows, write_page  # noqa: E402

REDRAW = """const t = performance.now();
for (let k = 0; k < 5; k++) document.getElementById('reset').click();
return (performance.now() - t) / 5;"""
RECOLOUR = """const t = performance.now(), s = document.getElementById('colour');
s.value = 'z'; s.dispatchEvent(new Event('change'));
return performance.now() - t;"""


def synthetic_columns(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """SYNTHETIC embedding columns of `n` rows (random values, made-up ids)."""
    rng = np.random.default_rng(seed)
    cols = {
        "specobjid": np.array([str(10**18 + i) for i in range(n)]),
        "plate": rng.integers(266, 12000, n),
        "z": rng.uniform(0, 0.5, n).astype(np.float32),
        "s": rng.normal(size=(n, 2)).astype(np.float32),
        "chi2": rng.lognormal(size=n),
        "outlier_score": rng.normal(size=n),
        "r_density": rng.normal(size=n),
        "r_chi2": rng.normal(size=n),
        "split": rng.choice(["train", "valid", "test"], n),
    }
    cols["outlier_rank"] = outlier_rank(cols["outlier_score"])
    return cols


def main() -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/explore-scale.html")
    cols = synthetic_columns(150_000)
    top, sample = choose_rows(cols["outlier_score"], 50, 150)
    flat = {"flux": np.ones(3921), "model": np.ones(3921), "rest": np.ones(3500)}
    spectra = {int(r): flat for r in [*top, *sample]}
    wave_obs, wave_rest = np.linspace(3800, 9200, 3921), np.linspace(2359, 9332, 3500)
    t = time.perf_counter()
    write_page(out, cols, {"RUN": "synthetic"}, spectra, wave_obs, wave_rest, top, len(sample))
    print(f"write {time.perf_counter() - t:.1f} s, {out.stat().st_size / 1e6:.1f} MB")
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(a)
    browser = webdriver.Chrome(options=opts, service=Service("/usr/bin/chromedriver"))
    try:
        t = time.perf_counter()
        browser.get(out.resolve().as_uri())
        while browser.execute_script("return document.body.dataset.ready") != "1":
            time.sleep(0.05)
        n = browser.execute_script("return explorer.n")
        print(f"load {time.perf_counter() - t:.2f} s, {n} points drawn")
        print(f"redraw {browser.execute_script(REDRAW):.0f} ms")
        print(f"recolour {browser.execute_script(RECOLOUR):.0f} ms")
    finally:
        browser.quit()


if __name__ == "__main__":
    main()
