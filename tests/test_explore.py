"""`specetl explore`: a self-contained page, checked as text and in a real headless Chromium."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from explore_fixtures import non_galaxy_paths, trained_galaxy_run

from cli import main
from model.embed import read_embedding
from model.explore.page import choose_rows, shown_rows
from workflows.spectra import embed_spectra


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> tuple[Path, dict]:
    """An embedding of the real galaxies plus real quasars/stars, and its page."""
    shards, run, held_out = trained_galaxy_run(tmp_path_factory)
    root = tmp_path_factory.mktemp("explore")
    emb = root / "cand.fits"
    embed_spectra(run, [*held_out[:10], *non_galaxy_paths()[:10]], emb, device="cpu")
    out = root / "page.html"
    res = CliRunner().invoke(
        main,
        ["explore", "--embedding", str(emb), "--run", str(run), "--out", str(out)]
        + ["--top", "5", "--sample", "4"],
    )
    assert res.exit_code == 0, res.output
    cols, _ = read_embedding(emb)
    return out, cols


def _data(html: str) -> dict:
    m = re.search(r'<script id="data" type="application/json">(.*?)</script>', html, re.S)
    return json.loads(m.group(1))


@pytest.mark.slow
def test_page_is_self_contained_and_carries_the_top_outliers(page):
    out, cols = page
    html = out.read_text()
    # nothing is fetched: no script, style sheet or image comes from elsewhere
    assert re.findall(r"<(?:script|link|img|iframe)[^>]*(?:src|href)=", html) == []
    assert "http://" not in html
    data = _data(html)
    assert data["points"]["id"] == list(cols["specobjid"])
    top = [data["points"]["rank"][i] for i in data["top"]]
    assert top == [1, 2, 3, 4, 5]
    carried = {s["i"] for s in data["spectra"]}
    assert set(data["top"]) <= carried and len(carried) == 9  # top 5 + a sample of 4
    assert "the page carries the spectra of the top 5 outliers" in html
    # real SDSS objects link to their SkyServer page
    assert data["link_template"].startswith("https://skyserver.sdss.org/dr16/")
    assert all(data["points"]["linkable"])
    assert {"z", "outlier_score", "log_chi2", "split", "class"} <= set(data["points"]["colour"])


def test_sampling_beyond_max_points_keeps_every_top_outlier():
    score = np.random.default_rng(0).normal(size=5000)
    top, sample = choose_rows(score, top_n=20, n_sample=30)
    assert np.all(score[top] >= np.sort(score)[-20]) and len(set(sample) & set(top)) == 0
    shown = shown_rows(5000, top, max_points=1000)
    assert len(shown) == 1000 and set(top) <= set(shown)
    assert len(shown_rows(800, top, max_points=1000)) == 800


def _chrome():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("chromium and chromedriver are not installed (`make browser` installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(a)
    opts.add_argument("--window-size=1300,1000")
    return webdriver.Chrome(options=opts, service=Service(driver))


@pytest.mark.slow
def test_click_a_point_in_chromium_shows_its_id_and_spectrum(page, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    out, cols = page
    browser = _chrome()
    try:
        browser.get(out.resolve().as_uri())
        for _ in range(50):
            if browser.execute_script("return document.body.dataset.ready") == "1":
                break
            time.sleep(0.1)
        assert browser.execute_script("return explorer.n") == len(cols["z"])
        # click the point of the top outlier (it carries a spectrum) with a real mouse event
        i = browser.execute_script("return explorer.withSpectrum()[0]")
        x, y = browser.execute_script(f"return explorer.screenPos({i})")
        ActionChains(browser).move_by_offset(x, y).click().perform()
        panel = browser.find_element(By.ID, "obj-id").text
        assert panel == str(cols["specobjid"][i])
        drawn = browser.find_element(By.ID, "spec-obs").get_attribute("data-drawn-points")
        assert int(drawn) > 1000  # the observed spectrum and its reconstruction were drawn
        # the top-outlier list is one click away
        browser.find_element(By.CSS_SELECTOR, "#top li a").click()
        rank1 = int(np.flatnonzero(cols["outlier_rank"] == 1)[0])
        assert browser.find_element(By.ID, "obj-id").text == str(cols["specobjid"][rank1])
        link = browser.find_element(By.ID, "obj-link").get_attribute("href")
        assert link.endswith("sid=" + str(cols["specobjid"][rank1]))
        shot = os.environ.get("SPECETL_EXPLORE_SCREENSHOT")  # docs/explore.png is made this way
        browser.save_screenshot(shot or str(tmp_path / "explore.png"))
        assert browser.get_log("browser") == [] or all(
            e["level"] != "SEVERE" for e in browser.get_log("browser")
        )
    finally:
        browser.quit()


def _ready(browser, page_path: Path) -> None:
    browser.get(page_path.resolve().as_uri())
    for _ in range(50):
        if browser.execute_script("return document.body.dataset.ready") == "1":
            return
        time.sleep(0.1)
    raise AssertionError("the page script did not start")


def _drag(browser, path: list[tuple[int, int]], shift: bool = False) -> None:
    """Press at path[0], move through the rest, release: a real mouse gesture, at viewport
    pixels (absolute, so nothing drifts from one gesture to the next)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    chain = ActionChains(browser)
    pointer, keys = chain.w3c_actions.pointer_action, chain.w3c_actions.key_action
    if shift:
        chain.key_down(Keys.SHIFT)
    for k, (x, y) in enumerate(path):
        pointer.move_to_location(x, y)
        keys.pause()
        if k == 0:
            chain.click_and_hold()
    chain.release()
    if shift:
        chain.key_up(Keys.SHIFT)
    chain.perform()


def _inside(poly: list[tuple[float, float]], x: float, y: float) -> bool:
    from matplotlib.path import Path as Polygon

    return bool(Polygon(poly).contains_point((x, y)))


@pytest.mark.slow
def test_box_lasso_and_top_list_selection_saves_a_csv_topcat_and_embed_read(
    page, tmp_path, tmp_path_factory
):
    """Select with a box, add a lasso (shift) and the top outliers, save: the downloaded CSV
    holds exactly those objects' ids, key, RA/DEC and scores, and goes back into
    `specetl embed --spectra --catalog` (and STILTS, where installed)."""
    import csv

    from selenium.webdriver.common.by import By

    from etl.catalog import SDSS_KEY
    from etl.tables import iter_table_columns

    out, cols = page
    browser = _chrome()
    try:
        browser.execute_cdp_cmd(
            "Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)}
        )
        _ready(browser, out)
        n = browser.execute_script("return explorer.n")
        pos = [tuple(browser.execute_script(f"return explorer.screenPos({i})")) for i in range(n)]
        xs, ys = sorted(p[0] for p in pos), sorted(p[1] for p in pos)
        # a box over the left half of the points (by page x), from above the top to below the bottom
        xmid = round((xs[n // 2 - 1] + xs[n // 2]) / 2)
        top, bottom = round(ys[0]) - 6, round(ys[-1]) + 6
        browser.find_element(By.CSS_SELECTOR, 'input[name="tool"][value="box"]').click()
        _drag(browser, [(round(xs[0]) - 6, top), (xmid - 20, bottom - 20), (xmid, bottom)])
        want = {i for i, (x, y) in enumerate(pos) if x < xmid}
        assert set(browser.execute_script("return explorer.selection()")) == want
        # shift + a lasso (a triangle round the right half's lowest point on the page, which the
        # box did not take, wherever the model put it) adds to it
        px, py = max((p for p in pos if p[0] > xmid), key=lambda p: p[1])
        tri = [(round(px) - 10, round(py) - 10), (round(px) + 10, round(py) - 10)]
        tri.append((round(px), round(py) + 5))
        browser.find_element(By.CSS_SELECTOR, 'input[name="tool"][value="lasso"]').click()
        _drag(browser, [*tri, tri[0]], shift=True)
        lassoed = {i for i, (x, y) in enumerate(pos) if _inside(tri, x, y)}
        assert want and lassoed - want  # each gesture picked objects of its own
        want |= lassoed
        assert set(browser.execute_script("return explorer.selection()")) == want
        # and the top outliers, from the list
        browser.find_element(By.ID, "sel-top").click()
        data = _data(out.read_text())
        want |= set(data["top"])
        assert set(browser.execute_script("return explorer.selection()")) == want
        assert len(want) < n  # the lasso left some out: the test can tell a selection from all
        ticks = browser.find_elements(By.CSS_SELECTOR, "#top input.pick")
        assert all(t.is_selected() for t in ticks)
        assert browser.find_element(By.ID, "nsel").text == str(len(want))
        browser.find_element(By.ID, "sel-save").click()
        for _ in range(100):
            saved = [p for p in tmp_path.glob("*.csv")]
            if saved:
                break
            time.sleep(0.1)
        assert len(saved) == 1 and saved[0].name == "run-selection.csv", saved
    finally:
        browser.quit()

    rows = list(csv.DictReader(saved[0].open()))
    ids = [data["points"]["id"][i] for i in want]
    assert sorted(r["SPECOBJID"] for r in rows) == sorted(ids)
    by_id = {str(s): k for k, s in enumerate(cols["specobjid"])}
    for r in rows:
        k = by_id[r["SPECOBJID"]]
        assert (int(r["PLATE"]), int(r["MJD"]), int(r["FIBERID"])) == tuple(
            int(cols[c][k]) for c in SDSS_KEY
        )
        assert float(r["RA"]) == pytest.approx(cols["ra"][k], abs=1e-7)
        assert float(r["DEC"]) == pytest.approx(cols["dec"][k], abs=1e-7)
        assert float(r["OUTLIER_SCORE"]) == pytest.approx(cols["outlier_score"][k], rel=1e-4)
        assert int(r["OUTLIER_RANK"]) == cols["outlier_rank"][k] and r["FILE"] == cols["file"][k]
    assert [int(r["OUTLIER_RANK"]) for r in rows] == sorted(int(r["OUTLIER_RANK"]) for r in rows)
    # specetl reads it as a catalogue (the key, SPECOBJID, RA/DEC, Z, CLASS) …
    assert next(iter_table_columns(saved[0]))["SPECOBJID"].tolist() == [
        r["SPECOBJID"] for r in rows
    ]
    # … and `embed --spectra --catalog` embeds exactly the selection's files, at its Z
    _, run, _ = trained_galaxy_run(tmp_path_factory)  # the run that made the page (cached)
    emb = tmp_path / "again.fits"
    res = CliRunner().invoke(
        main,
        ["embed", "--run", str(run), "--out", str(emb), "--catalog", str(saved[0])]
        + ["--device", "cpu", "--spectra", *[r["FILE"] for r in rows]],
    )
    assert res.exit_code == 0, res.output
    again, _ = read_embedding(emb)
    assert sorted(again["specobjid"]) == sorted(ids)
    if shutil.which("stilts"):
        from fits_tools import stilts_meta

        meta = {r["Name"]: r for r in csv.DictReader(io.StringIO(stilts_meta(saved[0], "csv")))}
        assert {"SPECOBJID", "RA", "DEC", "OUTLIER_SCORE"} <= set(meta)
        assert meta["RA"]["Class"] == "Double"
