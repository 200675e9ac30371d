"""`specetl explore`: one self-contained HTML page from an embedding (FITS table) and spectra.

Pure page-making: numpy arrays in, one HTML file out. No library is loaded by the page and no
network is used: the script (explorer.js, a small canvas scatter written for this job, ~300
lines) and the data (JSON; spectra as base64 float32) are inlined, so the page opens from
file://. Canvas rectangles drawn one colour bucket at a time stay interactive at 100k points;
beyond `max_points` the page shows a random sample (every top outlier kept) and says so.

`workflows.spectra.explore_page` composes this with the model (reconstructions) and the data (shards or
spec-lite files).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
#: numeric columns offered as colours when present (embedding column → label)
COLOURS = {
    "z": "redshift z",
    "outlier_score": "OUTLIER_SCORE",
    "log_chi2": "log10 CHI2",
    "r_density": "R_DENSITY (density term)",
    "r_chi2": "R_CHI2 (χ² term)",
    "r_signal": "R_SIGNAL (no-signal term)",
    "snr": "SNR (median S/N)",
}
#: categorical columns offered as colours when present
CATEGORIES = ("split", "class")
#: columns shown in the object panel
INFO = (
    "z",
    "outlier_score",
    "outlier_rank",
    "chi2",
    "snr",
    "r_density",
    "r_chi2",
    "r_signal",
    "split",
    "class",
    "synthetic",
)


def choose_rows(
    score: np.ndarray, top_n: int = 50, n_sample: int = 200, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(top, sample): row indices of the `top_n` highest scores and a random sample of others.

    These are the rows whose spectra the page carries.
    """
    score = np.nan_to_num(np.asarray(score, dtype=np.float64), nan=-np.inf)
    order = np.argsort(-score, kind="stable")
    top = order[:top_n]
    rest = order[top_n:]
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(rest, min(n_sample, len(rest)), replace=False))
    return top, sample


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode("ascii")


def _num(v: np.ndarray, digits: int = 5) -> list:
    """Floats as JSON numbers rounded to `digits` significant digits; NaN/inf → null."""
    v = np.asarray(v, dtype=np.float64)
    return [None if not np.isfinite(x) else float(f"{x:.{digits}g}") for x in v.tolist()]


def skyserver_url(release: str, specobjid: str) -> str:
    """SkyServer's Explore page of a spectrum (`release` like "dr16")."""
    return f"https://skyserver.sdss.org/{release}/en/tools/explore/summary.aspx?sid={specobjid}"


def _projection(s: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """The 2-d map: the latents themselves when S = 2, else their first two principal axes."""
    if s.shape[1] == 2:
        return s.astype(np.float64), ["s₁", "s₂"]
    c = s - s.mean(0)
    _, _, vt = np.linalg.svd(c[: min(len(c), 100_000)], full_matrices=False)
    return c @ vt[:2].T, ["PC1 of s", "PC2 of s"]


def page_data(
    cols: dict[str, np.ndarray],
    header: dict,
    spectra: dict[int, dict[str, np.ndarray]],
    wave_obs: np.ndarray,
    wave_rest: np.ndarray,
    top: np.ndarray,
    shown: np.ndarray,
) -> dict:
    """The JSON the page script reads. `shown` are the embedding rows drawn (all top rows are
    in it); `spectra` maps embedding row → {flux (NaN where masked), model, rest}."""
    pos = {int(r): k for k, r in enumerate(shown)}
    xy, axes = _projection(np.asarray(cols["s"], dtype=np.float64)[shown])
    sub = {
        k: np.asarray(v)[shown]
        for k, v in cols.items()
        if np.ndim(v) >= 1 and len(v) == len(cols["z"])
    }
    sub["log_chi2"] = np.log10(np.maximum(sub["chi2"].astype(np.float64), 1e-12))
    colour: dict[str, dict] = {}
    for k, label in COLOURS.items():
        if k in sub:
            colour[k] = {"label": label, "values": _num(sub[k], 4)}
    for k in CATEGORIES:
        if k in sub:
            cats, codes = np.unique(sub[k].astype(str), return_inverse=True)
            colour[k] = {"label": k.upper(), "categories": cats.tolist(), "values": codes.tolist()}
    # any other numeric per-object column (e.g. true parameters of a synthetic population)
    skip = {"ra", "dec", "row", "outlier_rank", "logp", "chi2", "plate", "mjd", "fiberid"}
    for k, v in sub.items():
        if k not in colour and k not in skip and v.ndim == 1 and v.dtype.kind in "fi":
            colour[k] = {"label": k.upper(), "values": _num(v, 4)}
    release = str(header.get("RELEASE", "dr16")).lower()
    plate = sub.get("plate")
    # real SDSS objects link to SkyServer; the page builds each URL from this template. A
    # SYNTHETIC object (the embedding's SYNTHETIC column, carried from the generator's
    # catalogue through the shards) has no page there.
    synthetic = sub.get("synthetic", np.zeros(len(shown), dtype=bool)).astype(bool)
    linkable = (
        [int(0 < int(p) and not s) for p, s in zip(plate.tolist(), synthetic.tolist(), strict=True)]
        if plate is not None
        else [0] * len(shown)
    )
    info = {}
    for k in INFO:
        if k in sub:
            kind = sub[k].dtype.kind
            info[k.upper()] = (
                _num(sub[k])
                if kind == "f"
                else sub[k].astype(int).tolist()
                if kind in "iu"
                else sub[k].astype(str).tolist()
            )
    export, export_after = export_columns(sub, header)
    return {
        "axes": axes,
        "export": export,
        "export_after": export_after,
        "csv_name": f"{Path(str(header.get('RUN', 'embedding'))).name or 'embedding'}-selection.csv",
        "link_template": skyserver_url(release, "{id}"),
        "default_colour": "outlier_score" if "outlier_score" in colour else "z",
        "points": {
            "x": _num(xy[:, 0], 6),
            "y": _num(xy[:, 1], 6),
            "id": sub["specobjid"].astype(str).tolist(),
            "z": _num(sub["z"]),
            "score": _num(sub["outlier_score"]),
            "rank": sub["outlier_rank"].astype(int).tolist(),
            "linkable": linkable,
            "info": info,
            "colour": colour,
        },
        "top": [pos[int(r)] for r in top],
        "wave_obs": _b64(wave_obs),
        "wave_rest": _b64(wave_rest),
        "spectra": [
            {
                "i": pos[r],
                "flux": _b64(s["flux"]),
                "model": _b64(s["model"]),
                "rest": _b64(s["rest"]),
            }
            for r, s in sorted(spectra.items())
            if r in pos
        ],
    }


def _exact(v: np.ndarray) -> list:
    """Ids and text as they are (integers stay integers, never through float)."""
    return v.astype(np.int64).tolist() if v.dtype.kind in "iu" else v.astype(str).tolist()


#: columns a saved selection carries after the panel's (where each row came from), when present
PROVENANCE = ("file", "shard", "row")


def export_columns(sub: dict[str, np.ndarray], header: dict) -> tuple[dict[str, list], list[str]]:
    """The columns a saved selection adds to the id and the panel's columns (`INFO`): the
    release's object key and RA/DEC (before them), FILE/SHARD/ROW (after), as the page's JSON.

    Names are the embedding's, so TOPCAT finds RA/DEC and `embed --spectra --catalog` the key.
    RA/DEC keep 10 significant digits (1e-7 deg, 0.4 mas, at RA > 100 deg), enough to cross-match.
    """
    key = [k.strip().lower() for k in str(header.get("OBJKEY", "")).split(",") if k.strip()]
    key = [k for k in key or ["plate", "mjd", "fiberid"] if k in sub]
    out: dict[str, list] = {k.upper(): _exact(sub[k]) for k in key}
    out.update((k.upper(), _num(sub[k], 10)) for k in ("ra", "dec") if k in sub)
    after = [k for k in PROVENANCE if k in sub]
    out.update((k.upper(), _exact(sub[k])) for k in after)
    return out, [k.upper() for k in after]


def shown_rows(n: int, top: np.ndarray, max_points: int, seed: int = 0) -> np.ndarray:
    """Rows drawn on the map: all when n <= max_points, else a random sample plus every `top`
    row (the rows the page carries spectra of)."""
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    others = np.setdiff1d(np.arange(n), top)
    keep = rng.choice(others, max(0, max_points - len(top)), replace=False)
    return np.sort(np.concatenate([keep, np.asarray(top)]))


def write_page(
    out: str | Path,
    cols: dict[str, np.ndarray],
    header: dict,
    spectra: dict[int, dict[str, np.ndarray]],
    wave_obs: np.ndarray,
    wave_rest: np.ndarray,
    top: np.ndarray,
    n_sample: int,
    max_points: int = 100_000,
    title: str = "",
) -> Path:
    """Write the page to `out` (temporary name, then rename); returns the path."""
    n = len(cols["z"])
    # every row whose spectrum the page carries is drawn (top outliers first among them)
    carried = np.union1d(np.asarray(top, dtype=np.int64), np.array(sorted(spectra), dtype=np.int64))
    shown = shown_rows(n, carried, max_points)
    data = page_data(cols, header, spectra, wave_obs, wave_rest, top, shown)
    sampling = (
        f"The map shows all {n:,} objects."
        if len(shown) == n
        else f"The map shows a random sample of {len(shown):,} of the {n:,} objects "
        f"(every one of the top {len(top)} outliers kept); the FITS table has them all."
    )
    spectra_note = (
        f"the page carries the spectra of the top {len(top)} outliers and of a random sample of "
        f"{n_sample} other objects ({len(data['spectra'])} in all), to stay small."
    )
    # TRAINEP; embeddings written before it was renamed call it EPOCH
    epoch = header.get("TRAINEP", header.get("EPOCH", "?"))
    summary = (
        f"{n:,} objects · run {header.get('RUN', '?')} (epoch {epoch}, "
        f"{header.get('OBJECTIV', '?')}) · split {header.get('SPLIT', '?')} · "
        f"OUTLIER_SCORE = {header.get('SCOREDEF', '')} · {spectra_note}"
    )
    html = (HERE / "template.html").read_text()
    # "</" inside inline JSON would end the <script> element early
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    for key, value in (
        ("__TITLE__", title or str(header.get("RUN", "embedding"))),
        ("__SUMMARY__", summary),
        ("__SAMPLING__", sampling),
        ("__TOPN__", str(len(top))),
        ("__SPECTRA_NOTE__", spectra_note),
        ("__SCRIPT__", (HERE / "explorer.js").read_text()),
        ("__DATA__", payload),
    ):
        html = html.replace(key, value)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(html, encoding="utf-8")
        os.replace(tmp, out)
    finally:  # a failed clean-up must not hide why the write failed
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return out
