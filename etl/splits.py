"""The split of an object (train/valid/test): a keyed hash of its HEALPix cell on the sky.

Why the sky and not an id: SPECOBJID encodes the reduction (run2d), so a re-reduction (DR16
v5_13_0 -> DR17 v5_13_2) gives every BOSS/eBOSS spectrum a new id, and a hash of the id moves
about half of them to another split. The object's position does not change between reductions,
and physically associated objects (close pairs, groups, cluster members) share a cell, so they
do not straddle train and test. The cell size is a manifest setting (``splits.nside``); the
reasoning behind the shipped value is in ``docs/shard-format.md``.

Repeat observations of one object (several plates, several nights) have the same position, so
they share a cell. Their positions can differ (float32 rounding, another targeting catalogue:
real repeats in tests/data/splits are 2.1" and 2.2" apart); should a cell boundary run between them, the spectra within
``splits.repeat_radius`` arcsec of each other (linked transitively) are one object and all take
the cell of their earliest observation (smallest MJD, then smallest cell): later observations
joining in a later release do not move the object. Groups are searched only among positions
within two fine cells (>= 8 radii, ~26" at 3") of a cell edge, which holds every pair that an
edge separates; a chain of repeats reaching further from the edge than that (more than ~8
links of 3") would be cut there.

Pure functions on arrays; nothing here reads files.
"""

from __future__ import annotations

import hashlib

import numpy as np

from etl.release import Splits
from shardio import SPLITS  # the split names belong to the shard format

ORDER = "nested"


def _healpix(nside: int):
    from astropy_healpix import HEALPix

    return HEALPix(nside=nside, order=ORDER)


def sky_cells(ra: np.ndarray, dec: np.ndarray, nside: int) -> np.ndarray:
    """Nested HEALPix index (int64) at ``nside`` of each position (ra, dec in degrees)."""
    import astropy.units as u

    ra = np.asarray(ra, dtype=np.float64)
    dec = np.asarray(dec, dtype=np.float64)
    if len(ra) == 0:
        return np.zeros(0, dtype=np.int64)
    cells = _healpix(nside).lonlat_to_healpix(np.mod(ra, 360.0) * u.deg, dec * u.deg)
    return np.asarray(cells, dtype=np.int64)


def valid_position(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """True where (ra, dec) is a usable position: finite, |dec| <= 90 degrees."""
    ra, dec = np.asarray(ra, dtype=np.float64), np.asarray(dec, dtype=np.float64)
    return np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90.0)


def cell_splits(
    cells: np.ndarray, nside: int, salt: str, fractions: tuple[float, float, float]
) -> np.ndarray:
    """Split name of each cell: keyed BLAKE2b of (nside, cell) compared with the fractions.

    Depends only on the cell, nside and salt: not on which other cells exist, their order, or
    the release. Each distinct cell is hashed once (a few thousand per release).
    """
    cells = np.asarray(cells, dtype=np.int64)
    uniq, inverse = np.unique(cells, return_inverse=True)
    key = salt.encode("utf-8")[:64]
    u = np.empty(len(uniq), dtype=np.float64)
    for i, cell in enumerate(uniq.tolist()):
        msg = int(nside).to_bytes(4, "little") + int(cell).to_bytes(8, "little")
        digest = hashlib.blake2b(msg, digest_size=8, key=key).digest()
        u[i] = int.from_bytes(digest, "little") / 2.0**64
    edges = np.cumsum(fractions)[:-1]
    return np.asarray(SPLITS)[np.searchsorted(edges, u, side="right")][inverse.reshape(-1)]


def repeat_groups(ra: np.ndarray, dec: np.ndarray, radius_arcsec: float) -> np.ndarray:
    """Label of each position's group: positions within ``radius_arcsec`` of each other, linked
    transitively (friends of friends). A label is the smallest row index in the group.

    Exact for radii up to a few arcminutes: candidates come from the position's own and its 8
    neighbouring cells of a fine HEALPix grid whose cells are at least 4 radii wide, and are
    then checked by true angular distance. Identical positions are merged first, so a catalogue
    with many copies of one position costs one point, not their pairs.
    """
    ra = np.asarray(ra, dtype=np.float64)
    dec = np.asarray(dec, dtype=np.float64)
    n = len(ra)
    if n == 0 or radius_arcsec <= 0:
        return np.arange(n)
    pos, first, point = np.unique(
        np.stack([ra, dec], axis=1), axis=0, return_index=True, return_inverse=True
    )
    point = point.reshape(-1)
    a, b = _close_pairs(pos[:, 0], pos[:, 1], radius_arcsec)
    label = _components(len(pos), a, b)
    # a group's label: the smallest row index among its points' first rows
    rep = np.full(len(pos), n, dtype=np.int64)
    np.minimum.at(rep, label, first)
    return rep[label][point]


def _fine_nside(radius_arcsec: float, at_least: int = 1) -> int:
    """Finest nside (>= ``at_least``) whose cells are at least 4 radii across (side ~ 58.6 deg /
    nside), so that points within the radius are in the same or adjacent cells."""
    radius_deg = radius_arcsec / 3600.0
    nside = at_least
    while nside < 2**20 and 58.6 / (2 * nside) >= 4 * radius_deg:
        nside *= 2
    return nside


def _close_pairs(ra: np.ndarray, dec: np.ndarray, radius_arcsec: float):
    """Index pairs (a < b) of distinct positions within ``radius_arcsec`` of each other."""
    from astropy_healpix import neighbours

    nside = _fine_nside(radius_arcsec)
    fine = sky_cells(ra, dec, nside)
    order = np.argsort(fine, kind="stable")
    sorted_cells = fine[order]
    xyz = _unit_vectors(ra, dec)
    cos_r = np.cos(np.radians(radius_arcsec / 3600.0))
    pairs_a, pairs_b = [], []
    block = 500_000  # bounds the (9, block) neighbour arrays
    for start in range(0, len(ra), block):
        idx = np.arange(start, min(start + block, len(ra)))
        cand = np.vstack([fine[idx][None, :], neighbours(fine[idx], nside, order=ORDER)])
        lo = np.searchsorted(sorted_cells, cand, side="left")
        hi = np.searchsorted(sorted_cells, cand, side="right")
        hi[cand < 0] = lo[cand < 0]  # no neighbour there
        count = (hi - lo).ravel()
        owner = np.broadcast_to(idx[None, :], cand.shape).ravel()
        rep_owner = np.repeat(owner, count)
        offsets = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
        other = order[np.repeat(lo.ravel(), count) + offsets]
        keep = other > rep_owner
        i, j = rep_owner[keep], other[keep]
        close = np.einsum("ij,ij->i", xyz[i], xyz[j]) >= cos_r
        pairs_a.append(i[close])
        pairs_b.append(j[close])
    if not pairs_a:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(pairs_a), np.concatenate(pairs_b)


def near_cell_edge(ra: np.ndarray, dec: np.ndarray, nside: int, radius_arcsec: float) -> np.ndarray:
    """True for positions within two fine cells (>= 8 radii) of an edge of their nside cell.

    Two positions within the radius of each other but in different cells both pass: they lie
    in adjacent fine cells with different parents, i.e. on their parents' edges. In the nested
    scheme a fine cell's place inside its parent is the de-interleaved bits of its sub-index.
    """
    fine_nside = _fine_nside(radius_arcsec, at_least=nside)
    k = int(np.log2(fine_nside // nside))
    if k <= 2:
        return np.ones(len(ra), dtype=bool)
    sub = sky_cells(ra, dec, fine_nside) & ((1 << (2 * k)) - 1)
    x = np.zeros_like(sub)
    y = np.zeros_like(sub)
    for bit in range(k):
        x |= ((sub >> (2 * bit)) & 1) << bit
        y |= ((sub >> (2 * bit + 1)) & 1) << bit
    edge = (1 << k) - 2
    return (x < 2) | (x >= edge) | (y < 2) | (y >= edge)


def _unit_vectors(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    r, d = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)], axis=1)


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of n nodes and edges (a, b): each node's smallest member index."""
    label = np.arange(n)
    if len(a) == 0:
        return label
    while True:
        m = np.minimum(label[a], label[b])
        new = label.copy()
        np.minimum.at(new, a, m)
        np.minimum.at(new, b, m)
        new = new[new]  # pointer jumping: chains collapse in O(log length) rounds
        if np.array_equal(new, label):
            return label
        label = new


def object_cells(
    ra: np.ndarray, dec: np.ndarray, mjd: np.ndarray, nside: int, radius_arcsec: float
) -> np.ndarray:
    """The cell that decides each spectrum's split: its own, or its repeat group's earliest.

    Only positions near a cell edge can belong to a group that spans two cells, so repeat
    groups are searched among those (a few per cent of the sky at nside 32) only.
    """
    cells = sky_cells(ra, dec, nside)
    if len(cells) == 0 or radius_arcsec <= 0:
        return cells
    near = np.flatnonzero(near_cell_edge(ra, dec, nside, radius_arcsec))
    group = repeat_groups(np.asarray(ra)[near], np.asarray(dec)[near], radius_arcsec)
    if (group == np.arange(len(near))).all():
        return cells
    ncell = 12 * nside * nside
    key = np.asarray(mjd, dtype=np.int64)[near] * ncell + cells[near]  # earliest, then smallest
    best = np.full(len(near), np.iinfo(np.int64).max)
    np.minimum.at(best, group, key)
    out = cells.copy()
    out[near] = best[group] % ncell
    return out


def split_of(ra: np.ndarray, dec: np.ndarray, mjd: np.ndarray, splits: Splits) -> np.ndarray:
    """Split name ("train"/"valid"/"test") of each spectrum at (ra, dec) degrees observed on
    ``mjd``, under the manifest's ``splits`` (fractions, salt, nside, repeat radius)."""
    cells = object_cells(ra, dec, mjd, splits.nside, splits.repeat_radius)
    fractions = (splits.train, splits.valid, splits.test)
    return cell_splits(cells, splits.nside, splits.salt, fractions)
