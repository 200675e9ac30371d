"""The typed dataclasses of a release manifest, how a TOML table becomes one, and their checks.

`etl.release` loads a manifest file into these (and re-exports them); a release family with a
reader of its own (DESI: `etl.desi.manifest`) builds its shared sections with the same
`_build` and `_check`, which is why they live apart from the loader (no import circle).

A manifest (``data_manifests/<release>.toml``) holds everything that changes between data
releases: catalogue sources, the spec-lite URL template of each reduction (run2d), the selection
cuts, the observed grid, the telluric mask, the normalisation window, split fractions and shard
size. Code never names a release; it receives a :class:`Release`.

Loading is strict: an unknown or a missing key is a :class:`ManifestError` naming the key and the
file, so a typo in a manifest cannot silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import string
import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, get_type_hints

import numpy as np

from etl.objects import (
    _FIELD_RE,
    _RUN2D_RE,
    ObjectLayout,
    _parse_derived,
    _valid_int,
    validate_run2d,
)
from etl.objects import spec_lite_name as spec_lite_name
from etl.objects import spec_lite_relpath as spec_lite_relpath
from etl.objects import validate_object_id as validate_object_id
from etl.paths import UnsafePath, safe_name  # re-exported: etl.release's API

if sys.version_info >= (3, 11):
    pass
else:  # pragma: no cover
    pass

#: Where the manifests shipped with specetl live: ``data_manifests/`` beside the ``etl`` package,
#: in a checkout and in an installed wheel alike (pyproject.toml ships it as package data there).
MANIFEST_DIR = Path(
    os.environ.get("SPECETL_MANIFESTS", Path(__file__).resolve().parent.parent / "data_manifests")
)


class ManifestError(ValueError):
    """A release manifest is missing, malformed, or names an unknown key."""


class UnknownRun2d(KeyError):
    """A catalogue row names a reduction (run2d) that the release manifest has no template for."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class CatalogSources:
    """Where the catalogue of spectra comes from."""

    data_release: int  #: SkyServer data release number for astroquery ``SDSS.query_sql``
    #: SkyServer table with what the cuts need ("" where none exists: ``--catalog sql`` refuses)
    sql_table: str
    #: template of the bulk summary table (specObj/spAll FITS, optionally .gz); ``{sas}`` = root
    specobj_url: str


@dataclass(frozen=True)
class Archive:
    """The Science Archive Server and its spec-lite URL template per reduction.

    Each template holds ``{sas}`` (the archive root), ``{path}`` (the object's path, see
    :class:`ObjectLayout`) and optionally ``{run2d}``.
    """

    sas_url: str
    spec_lite: Mapping[str, str]


@dataclass(frozen=True)
class Selection:
    """Catalogue cuts; bounds are documented as open/closed in the manifest."""

    class_: str
    z_min: float  #: exclusive
    z_max: float  #: inclusive
    z_err_min: float  #: exclusive
    z_err_max: float  #: exclusive
    zwarning: int
    science_primary: bool


@dataclass(frozen=True)
class Grid:
    """Log-linear observed-frame grid: log10(λ/Å) = loglam0 + dloglam·k, k = 0 … npix-1."""

    loglam0: float
    dloglam: float
    npix: int

    @property
    def loglam(self) -> np.ndarray:
        """log10 of the observed wavelength of each pixel (float64, npix)."""
        return self.loglam0 + self.dloglam * np.arange(self.npix, dtype=np.float64)

    @property
    def wave_obs(self) -> np.ndarray:
        """Observed-frame vacuum wavelength of each pixel in Å (float64, npix)."""
        return 10.0**self.loglam


@dataclass(frozen=True)
class Telluric:
    """Night-sky line mask: ±half_width Å around the top_n brightest lines inside the grid."""

    line_list: Path  #: absolute path, resolved against the manifest's folder
    line_list_units: str  #: "nm" or "angstrom"
    top_n: int
    half_width: float  #: Å


@dataclass(frozen=True)
class Normalisation:
    """Restframe window (Å) whose median flux normalises each spectrum."""

    restframe_min: float
    restframe_max: float


@dataclass(frozen=True)
class Splits:
    """Train/valid/test fractions and how objects are assigned: a keyed hash (``salt``) of the
    object's HEALPix cell at ``nside`` (nested); see :mod:`etl.splits`."""

    train: float
    valid: float
    test: float
    salt: str
    nside: int  #: HEALPix resolution of the cells that are hashed (a power of two)
    repeat_radius: float  #: arcsec: spectra closer than this are one object (same split)


@dataclass(frozen=True)
class Shards:
    shard_size: int  #: spectra per output HDF5 shard


@dataclass(frozen=True)
class ReleaseInfo:
    name: str
    description: str


@dataclass(frozen=True)
class Release:
    """Everything specetl knows about one data release, read from its manifest."""

    release: ReleaseInfo
    catalog: CatalogSources
    object: ObjectLayout
    archive: Archive
    selection: Selection
    grid: Grid
    telluric: Telluric
    normalisation: Normalisation
    splits: Splits
    shards: Shards
    manifest_path: Path = dataclasses.field(compare=False)
    manifest_sha256: str = dataclasses.field(compare=False)

    @property
    def name(self) -> str:
        return self.release.name

    @property
    def run2ds(self) -> tuple[str, ...]:
        return tuple(self.archive.spec_lite)

    def _sas(self, base_url: str | None) -> str:
        return (base_url or self.archive.sas_url).rstrip("/")

    def specobj_url(self, base_url: str | None = None) -> str:
        """URL of the bulk specObj catalogue; ``base_url`` replaces the archive root."""
        return self.catalog.specobj_url.format(sas=self._sas(base_url))

    @property
    def key(self) -> tuple[str, ...]:
        """The object-key fields (lower case), e.g. ``("plate", "mjd", "fiberid")``."""
        return self.object.key

    def validate_key(self, run2d: Any, key: tuple[Any, ...]) -> tuple[str, tuple[int, ...]]:
        """Check and normalise an object's run2d and key values; ValueError naming the bad one."""
        return validate_run2d(run2d), tuple(
            _valid_int(name, value) for name, value in zip(self.key, key, strict=True)
        )

    def _key_values(self, key: tuple[Any, ...], named: Mapping[str, Any]) -> tuple[Any, ...]:
        if not named:
            if len(key) != len(self.key):
                raise ValueError(f"an object key is ({', '.join(self.key)}), got {key!r}")
            return key
        if key or set(named) != set(self.key):
            raise ValueError(f"an object key is ({', '.join(self.key)}), got {dict(named)!r}")
        return tuple(named[k] for k in self.key)

    def spec_lite_relpath(self, run2d: Any, *key: Any, **named: Any) -> Path:
        """Local path of an object's spec-lite file below a spectra folder: ``<run2d>/<path>``.

        The key is given in the release's order or by name (``plate=266, mjd=…``).
        Built only from validated integers and a run2d made of ``[A-Za-z0-9_.]``: nothing a
        server or a catalogue sends can steer where a file lands.
        """
        run2d, values = self.validate_key(run2d, self._key_values(key, named))
        return Path(run2d) / self.object.path.format(**self.object.fields(values))

    def spec_lite_url(
        self, run2d: Any, *key: Any, base_url: str | None = None, **named: Any
    ) -> str:
        """URL of one spec-lite file. Raises :class:`UnknownRun2d` for a reduction not in the table."""
        relpath = self.spec_lite_relpath(run2d, *key, **named)
        run2d = relpath.parts[0]
        try:
            template = self.archive.spec_lite[run2d]
        except KeyError:
            raise UnknownRun2d(
                f"run2d {run2d!r} is not in the {self.name} manifest's spec_lite table "
                f"(known: {', '.join(self.run2ds)})"
            ) from None
        path = Path(*relpath.parts[1:]).as_posix()
        return template.format(sas=self._sas(base_url), run2d=run2d, path=path)

    @cached_property
    def wave_obs(self) -> np.ndarray:
        return self.grid.wave_obs


# --- loading -----------------------------------------------------------------------------------

_SECTIONS: dict[str, type] = {
    "release": ReleaseInfo,
    "catalog": CatalogSources,
    "object": ObjectLayout,
    "archive": Archive,
    "selection": Selection,
    "grid": Grid,
    "telluric": Telluric,
    "normalisation": Normalisation,
    "splits": Splits,
    "shards": Shards,
}
# TOML keys that are Python keywords
_KEY_ALIASES = {"class": "class_"}


def _build(cls: type, table: Any, where: str, path: Path) -> Any:
    if not isinstance(table, dict):
        raise ManifestError(f"{path}: [{where}] must be a table")
    hints = get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    given = {_KEY_ALIASES.get(k, k): v for k, v in table.items()}
    unknown = sorted(set(given) - fields)
    if unknown:
        raise ManifestError(f"{path}: unknown key {where}.{unknown[0]}")
    missing = sorted(fields - set(given))
    if missing:
        key = {v: k for k, v in _KEY_ALIASES.items()}.get(missing[0], missing[0])
        raise ManifestError(f"{path}: missing key {where}.{key}")
    kwargs = {}
    for name, value in given.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}", path)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str, path: Path) -> Any:
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is Path:
        if not isinstance(value, str):
            raise ManifestError(f"{path}: {where} must be a path string")
        return (path.parent / value).resolve()
    if hint == tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or not value:
            raise ManifestError(f"{path}: {where} must be a non-empty list of strings")
        return tuple(value)
    if hint in (int, str, bool):
        if type(value) is not hint:
            raise ManifestError(f"{path}: {where} must be {hint.__name__}, got {value!r}")
        return value
    if getattr(hint, "__origin__", None) is Mapping:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ManifestError(f"{path}: {where} must be a table of strings")
        for run2d in value:
            if not _RUN2D_RE.match(run2d):
                raise ManifestError(f"{path}: {where} has an invalid run2d key {run2d!r}")
        return types.MappingProxyType(dict(value))
    raise ManifestError(f"{path}: {where}: unsupported type {hint}")  # pragma: no cover


def _check(r: Release, path: Path) -> None:
    try:  # the name becomes DATA/<name>/: one plain folder name, never '../..' or '/abs'
        safe_name(r.release.name, "release.name")
    except UnsafePath as err:
        raise ManifestError(f"{path}: {err}") from None
    s = r.splits
    if min(s.train, s.valid, s.test) < 0 or abs(s.train + s.valid + s.test - 1.0) > 1e-9:
        raise ManifestError(f"{path}: splits must be non-negative and sum to 1")
    if not (1 <= s.nside <= 2**29 and s.nside & (s.nside - 1) == 0):
        raise ManifestError(f"{path}: splits.nside must be a power of two, got {s.nside}")
    if not 0.0 <= s.repeat_radius <= 60.0:
        raise ManifestError(f"{path}: splits.repeat_radius must be 0 to 60 arcsec")
    if r.grid.npix <= 0 or r.grid.dloglam <= 0:
        raise ManifestError(f"{path}: grid.npix and grid.dloglam must be positive")
    if r.telluric.line_list_units not in ("nm", "angstrom"):
        raise ManifestError(f"{path}: telluric.line_list_units must be 'nm' or 'angstrom'")
    if not r.telluric.line_list.is_file():
        raise ManifestError(f"{path}: telluric.line_list {r.telluric.line_list} does not exist")
    if r.normalisation.restframe_min >= r.normalisation.restframe_max:
        raise ManifestError(f"{path}: normalisation window is empty")
    if r.shards.shard_size <= 0:
        raise ManifestError(f"{path}: shards.shard_size must be positive")
    for run2d, template in r.archive.spec_lite.items():
        used = template_fields(template, path, f"archive.spec_lite.{run2d}")
        for field in ("sas", "path"):
            if field not in used:
                raise ManifestError(f"{path}: archive.spec_lite.{run2d} lacks {{{field}}}")
        if used - {"sas", "path", "run2d"}:
            extra = sorted(used - {"sas", "path", "run2d"})[0]
            raise ManifestError(f"{path}: archive.spec_lite.{run2d} has unknown field {{{extra}}}")
    _check_object(r.object, path)


def template_fields(template: str, path: Path, where: str) -> set[str]:
    """The ``{field}`` names a manifest's URL or path template uses (a malformed template is a
    ManifestError naming the manifest and where in it)."""
    try:
        return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as err:
        raise ManifestError(f"{path}: {where}: {err}") from None


def _check_object(o: ObjectLayout, path: Path) -> None:
    """Key names are identifiers; derived fields are ``key // n``; the path uses only those."""
    for name in (*o.key, *o.derived):
        if not _FIELD_RE.match(name):
            raise ManifestError(f"{path}: object field {name!r} is not a lower-case identifier")
    for name, expr in o.derived.items():
        try:
            source, _ = _parse_derived(expr)
        except ValueError as err:
            raise ManifestError(f"{path}: object.derived.{name}: {err}") from None
        if source not in o.key:
            raise ManifestError(f"{path}: object.derived.{name} uses {source!r}, not a key field")
    used = template_fields(o.path, path, "object.path")
    unknown = sorted(used - set(o.key) - set(o.derived))
    if unknown:
        raise ManifestError(f"{path}: object.path uses unknown field {{{unknown[0]}}}")
    missing = sorted(set(o.key) - used)
    if missing:
        raise ManifestError(f"{path}: object.path lacks key field {{{missing[0]}}}")
    if o.path.startswith("/") or ".." in o.path.split("/") or not o.path.endswith(".fits"):
        raise ManifestError(f"{path}: object.path must be a relative path to a .fits file")
    try:
        o.path.format(**o.fields(tuple(1 for _ in o.key)))
    except (ValueError, KeyError) as err:
        raise ManifestError(f"{path}: object.path cannot be formatted ({err})") from None
