"""Release manifests: one TOML file per data release, loaded into frozen dataclasses.

A manifest (``data_manifests/<release>.toml``) holds everything that changes between data
releases: catalogue sources, the spec-lite URL template of each reduction (run2d), the selection
cuts, the observed grid, the telluric mask, the normalisation window, split fractions and shard
size. Code never names a release; it receives a :class:`Release` (the dataclasses are in
`etl.manifest_schema`, re-exported here). A manifest with a ``[coadd]`` table is a DESI release
(`etl.desi.manifest`).

Loading is strict: an unknown or a missing key is a :class:`ManifestError` naming the key and the
file, so a typo in a manifest cannot silently fall back to a default.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from etl.manifest_schema import (  # re-exported: etl.release's API
    _SECTIONS,
    MANIFEST_DIR,
    Archive,
    CatalogSources,
    Grid,
    ManifestError,
    Normalisation,
    ObjectLayout,
    Release,
    ReleaseInfo,
    Selection,
    Shards,
    Splits,
    Telluric,
    UnknownRun2d,
    _build,
    _check,
    safe_name,
    spec_lite_name,
    spec_lite_relpath,
    validate_object_id,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "MANIFEST_DIR",
    "Archive",
    "CatalogSources",
    "Grid",
    "ManifestError",
    "Normalisation",
    "ObjectLayout",
    "Release",
    "ReleaseInfo",
    "Selection",
    "Shards",
    "Splits",
    "Telluric",
    "UnknownRun2d",
    "load_release",
    "manifest_path",
    "safe_name",
    "spec_lite_name",
    "spec_lite_relpath",
    "validate_object_id",
]


def manifest_path(name_or_path: str | os.PathLike) -> Path:
    """Resolve a release name (``dr16``) or a path to a manifest file."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or candidate.exists():
        return candidate
    return MANIFEST_DIR / f"{name_or_path}.toml"


def load_release(name_or_path: str | os.PathLike) -> Release:
    """Load and validate a release manifest by name (``"dr16"``) or path."""
    path = manifest_path(name_or_path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        known = sorted(p.stem for p in MANIFEST_DIR.glob("*.toml"))
        raise ManifestError(
            f"no manifest for release {str(name_or_path)!r} ({path}); known: {', '.join(known)}"
        ) from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ManifestError(f"{path}: not valid TOML: {err}") from None
    if "coadd" in doc:  # a DESI release: coadds of many targets, its own object/archive tables
        from etl.desi.manifest import desi_release

        return desi_release(doc, path, hashlib.sha256(raw).hexdigest())  # type: ignore[return-value]
    unknown = sorted(set(doc) - set(_SECTIONS))
    if unknown:
        raise ManifestError(f"{path}: unknown key {unknown[0]}")
    missing = sorted(set(_SECTIONS) - set(doc))
    if missing:
        raise ManifestError(f"{path}: missing key {missing[0]}")
    parts = {name: _build(cls, doc[name], name, path) for name, cls in _SECTIONS.items()}
    release = Release(
        **parts, manifest_path=path.resolve(), manifest_sha256=hashlib.sha256(raw).hexdigest()
    )
    _check(release, path)
    return release
