"""A DESI release manifest (``data_manifests/desi-edr.toml``, ``desi-dr1.toml``) -> DesiRelease.

A DESI manifest shares the SDSS manifests' ``[release]``, ``[grid]``, ``[telluric]``,
``[normalisation]``, ``[splits]`` and ``[shards]`` tables (same dataclasses, same checks) and
replaces the catalogue, object, archive and selection tables with DESI's: one coadd file holds
every target of a HEALPix pixel, so the object key (TARGETID, SURVEY, PROGRAM) does not name a
file; (SURVEY, PROGRAM, HEALPIX) does. :func:`etl.release.load_release` hands a manifest with a
``[coadd]`` table here. Loading is as strict as for SDSS: unknown or missing keys are errors.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from etl.manifest_schema import (
    Grid,
    ManifestError,
    Normalisation,
    ReleaseInfo,
    Shards,
    Splits,
    Telluric,
    _build,
    _check,
    template_fields,
)
from etl.objects import ObjectLayout, _parse_derived

#: The only comparison operators a cut may use ("true": a flag column is set).
CUT_OPS = ("==", "!=", ">", ">=", "<", "<=", "true")
#: A survey or program name as it appears in a DESI path (cmx, sv1, main; dark, bright, other).
_NAME_RE = re.compile(r"^[a-z][a-z0-9]*$")


@dataclass(frozen=True)
class DesiCatalog:
    zall_url: str  #: the zall-pix catalogue; ``{base}`` = archive root


@dataclass(frozen=True)
class CoaddObject:
    """Which coadd holds an object: key fields, and path templates below ``healpix_url``."""

    key: tuple[str, ...]
    path: str
    sha256sum: str
    derived: Mapping[str, str]

    def __reduce__(self) -> tuple:  # mapping proxies do not pickle (Dask ships this)
        return (CoaddObject, (self.key, self.path, self.sha256sum, dict(self.derived)))

    def fields(self, survey: str, program: str, healpix: int) -> dict[str, Any]:
        """Template fields of one coadd; survey/program checked (they become folder names)."""
        for name, value in (("survey", survey), ("program", program)):
            if not _NAME_RE.match(str(value)):
                raise ValueError(f"invalid {name} {value!r}")
        healpix = int(healpix)
        if not 0 <= healpix < 12 * 64**2 * 4**10:
            raise ValueError(f"invalid healpix {healpix!r}")
        out: dict[str, Any] = {"survey": survey, "program": program, "healpix": healpix}
        for name, expr in self.derived.items():
            source, divisor = _parse_derived(expr)
            out[name] = out[source] // divisor
        return out


@dataclass(frozen=True)
class DesiArchive:
    base_url: str
    specprod: str
    healpix_url: str  #: ``{base}`` and ``{path}`` (a coadd's path, see CoaddObject)


@dataclass(frozen=True)
class CoaddLayout:
    """The HDUs of a coadd that training reads (the rest is never fetched)."""

    arms: tuple[str, ...]
    table_hdu: str
    arm_hdus: tuple[str, ...]

    @property
    def hdus(self) -> tuple[str, ...]:
        """Every HDU to fetch, e.g. FIBERMAP, B_WAVELENGTH, B_FLUX, …, Z_MASK."""
        return (self.table_hdu, *(f"{a}_{h}" for a in self.arms for h in self.arm_hdus))


@dataclass(frozen=True)
class Cut:
    column: str  #: catalogue-contract column
    op: str
    value: Any = None

    @property
    def label(self) -> str:
        return (
            f"{self.column} is set"
            if self.op == "true"
            else f"{self.column} {self.op} {self.value!r}"
        )


@dataclass(frozen=True)
class DesiSelection:
    cuts: tuple[Cut, ...]
    deltachi2_min: float  #: exclusive; 0 disables


@dataclass(frozen=True)
class DesiRelease:
    """Everything specetl knows about one DESI release (see :class:`etl.release.Release`)."""

    release: ReleaseInfo
    catalog: DesiCatalog
    object: CoaddObject
    archive: DesiArchive
    coadd: CoaddLayout
    selection: DesiSelection
    grid: Grid
    telluric: Telluric
    normalisation: Normalisation
    splits: Splits
    shards: Shards
    manifest_path: Path = dataclasses.field(compare=False)
    manifest_sha256: str = dataclasses.field(compare=False)

    family = "desi"

    @property
    def name(self) -> str:
        return self.release.name

    @property
    def key(self) -> tuple[str, ...]:
        return self.object.key

    @cached_property
    def wave_obs(self) -> np.ndarray:
        return self.grid.wave_obs

    def _base(self, base_url: str | None) -> str:
        return (base_url or self.archive.base_url).rstrip("/")

    def zall_url(self, base_url: str | None = None) -> str:
        return self.catalog.zall_url.format(base=self._base(base_url))

    def coadd_relpath(self, survey: str, program: str, healpix: int) -> str:
        """Path of a coadd below the healpix folder (also its local path below ``coadds/``)."""
        return self.object.path.format(**self.object.fields(survey, program, healpix))

    def coadd_url(
        self, survey: str, program: str, healpix: int, base_url: str | None = None
    ) -> str:
        path = self.coadd_relpath(survey, program, healpix)
        return self.archive.healpix_url.format(base=self._base(base_url), path=path)

    def sha256sum_url(
        self, survey: str, program: str, healpix: int, base_url: str | None = None
    ) -> str:
        path = self.object.sha256sum.format(**self.object.fields(survey, program, healpix))
        return self.archive.healpix_url.format(base=self._base(base_url), path=path)


_SHARED = {
    "release": ReleaseInfo,
    "grid": Grid,
    "telluric": Telluric,
    "normalisation": Normalisation,
    "splits": Splits,
    "shards": Shards,
}
_OWN = {"catalog": DesiCatalog, "object": CoaddObject, "archive": DesiArchive, "coadd": CoaddLayout}


def desi_release(doc: Mapping[str, Any], path: Path, sha256: str) -> DesiRelease:
    """Build and check a :class:`DesiRelease` from a parsed manifest ``doc``."""
    sections = {*_SHARED, *_OWN, "selection"}
    unknown = sorted(set(doc) - sections)
    if unknown:
        raise ManifestError(f"{path}: unknown key {unknown[0]}")
    missing = sorted(sections - set(doc))
    if missing:
        raise ManifestError(f"{path}: missing key {missing[0]}")
    parts = {name: _build(cls, doc[name], name, path) for name, cls in {**_SHARED, **_OWN}.items()}
    parts["selection"] = _selection(doc["selection"], path)
    release = DesiRelease(**parts, manifest_path=path.resolve(), manifest_sha256=sha256)
    _check_shared(release, path)
    _check_templates(release, path)
    return release


def _selection(table: Any, path: Path) -> DesiSelection:
    if not isinstance(table, dict) or set(table) != {"cuts", "deltachi2_min"}:
        raise ManifestError(f"{path}: [selection] must hold exactly cuts and deltachi2_min")
    cuts = []
    for i, raw in enumerate(table["cuts"] if isinstance(table["cuts"], list) else [None]):
        where = f"selection.cuts[{i}]"
        if not isinstance(raw, dict) or not {"column", "op"} <= set(raw) <= {
            "column",
            "op",
            "value",
        }:
            raise ManifestError(f"{path}: {where} must be {{ column, op[, value] }}")
        if raw["op"] not in CUT_OPS:
            raise ManifestError(f"{path}: {where}: op {raw['op']!r} is not one of {CUT_OPS}")
        if (raw["op"] == "true") == ("value" in raw):
            raise ManifestError(f"{path}: {where}: op 'true' takes no value, the others one")
        cuts.append(Cut(str(raw["column"]).upper(), raw["op"], raw.get("value")))
    d = table["deltachi2_min"]
    if isinstance(d, bool) or not isinstance(d, int | float) or d < 0:
        raise ManifestError(f"{path}: selection.deltachi2_min must be a number >= 0")
    return DesiSelection(tuple(cuts), float(d))


def _check_shared(r: DesiRelease, path: Path) -> None:
    """The SDSS checks of the shared tables (splits, grid, telluric, normalisation, shards):
    :func:`etl.release._check` on a view with an empty spec-lite table and a trivial object
    table (DESI's own tables are checked in :func:`_check_templates`)."""
    view = SimpleNamespace(
        **{name: getattr(r, name) for name in _SHARED},
        archive=SimpleNamespace(spec_lite={}),
        object=ObjectLayout(("x",), "{x}.fits", {}),
    )
    _check(view, path)  # type: ignore[arg-type]


def _check_templates(r: DesiRelease, path: Path) -> None:
    o = r.object
    if tuple(o.key) != ("targetid", "survey", "program"):
        raise ManifestError(f"{path}: object.key must be [targetid, survey, program]")
    for name, expr in o.derived.items():
        try:
            source, _ = _parse_derived(expr)
        except ValueError as err:
            raise ManifestError(f"{path}: object.derived.{name}: {err}") from None
        if source != "healpix":
            raise ManifestError(f"{path}: object.derived.{name} must derive from healpix")
    allowed = {"survey", "program", "healpix", *o.derived}
    for where, template in (("object.path", o.path), ("object.sha256sum", o.sha256sum)):
        unknown = sorted(template_fields(template, path, where) - allowed)
        if unknown:
            raise ManifestError(f"{path}: {where} uses unknown field {{{unknown[0]}}}")
        if template.startswith("/") or ".." in template.split("/"):
            raise ManifestError(f"{path}: {where} must be a relative path")
    if not o.path.endswith(".fits"):
        raise ManifestError(f"{path}: object.path must name a .fits file")
    if template_fields(r.archive.healpix_url, path, "archive.healpix_url") != {"base", "path"}:
        raise ManifestError(f"{path}: archive.healpix_url must use exactly {{base}} and {{path}}")
    if template_fields(r.catalog.zall_url, path, "catalog.zall_url") - {"base"}:
        raise ManifestError(f"{path}: catalog.zall_url may use only {{base}}")
    if not r.coadd.arms or not r.coadd.arm_hdus:
        raise ManifestError(f"{path}: coadd.arms and coadd.arm_hdus must not be empty")
