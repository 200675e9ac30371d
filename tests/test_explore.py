"""`specetl explore`: a self-contained page, checked as text and in a real headless Chromium."""

from __future__ import annotations

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
