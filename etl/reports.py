"""What a fetch and a build did: the summaries `specetl fetch` and `build-shards` print and write.

Their own module so that every release family's fetch and build (SDSS in `etl.fetch` and
`etl.build`, DESI in `etl.desi`) returns the same types without importing one another.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from etl.shard_index import read_index

if TYPE_CHECKING:
    from etl.download import Outcome


@dataclass
class FetchReport:
    """What a fetch did; ``ok`` is False when any selected object failed."""

    release: str
    catalog_source: str
    selected: int = 0
    downloaded: int = 0
    already_present: int = 0
    to_download: int = 0
    bytes: int = 0
    seconds: float = 0.0  #: wall time of the download phase
    dry_run: bool = False
    failed: dict[str, list[dict]] = field(default_factory=dict)
    space: dict | None = None  #: dry run: estimated bytes to download vs free space
    stopped: str = ""  #: why the run stopped early (a full disk), "" when it did not
    not_attempted: int = 0  #: files left for the rerun when the run stopped

    @property
    def n_failed(self) -> int:
        return sum(len(v) for v in self.failed.values())

    @property
    def ok(self) -> bool:
        return self.n_failed == 0

    def add_failure(self, o: Outcome) -> None:
        j = o.job
        self.failed.setdefault(o.reason, []).append(
            {"specobjid": str(j.specobjid), "run2d": j.run2d, **dict(j.key), "detail": o.detail}
        )

    def to_dict(self) -> dict:
        rate = self.downloaded / self.seconds if self.seconds > 0 else 0.0
        return {
            "release": self.release,
            "catalog_source": self.catalog_source,
            "dry_run": self.dry_run,
            "selected": self.selected,
            "downloaded": self.downloaded,
            "already_present": self.already_present,
            "failed": self.n_failed,
            "failed_by_reason": {
                k: {"count": len(v), "objects": v} for k, v in self.failed.items()
            },
            "bytes_downloaded": self.bytes,
            "download_seconds": round(self.seconds, 3),
            "files_per_second": round(rate, 2),
            "stopped": self.stopped or None,
            "not_attempted": self.not_attempted,
        } | ({"disk_space": self.space} if self.space is not None else {})


@dataclass
class BuildResult:
    """What a build did (also written, in more detail, to build-report.json)."""

    shards_dir: Path
    shards: list[dict] = field(default_factory=list)
    written: int = 0
    kept: int = 0
    accepted: int = 0
    rejected: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    #: format version of the shards this build replaced wholesale (None: same format or none)
    replaced_format_version: int | None = None

    @classmethod
    def from_index(cls, shards_dir: str | Path) -> BuildResult:
        """The shards already in ``shards_dir`` as they are, every one kept (no build run)."""
        shards = read_index(shards_dir)["shards"]
        accepted = sum(s["rows"] for s in shards)
        return cls(Path(shards_dir), shards, kept=len(shards), accepted=accepted)

    @property
    def rejected_by_reason(self) -> dict[str, int]:
        return dict(Counter(r["reason"] for r in self.rejected).most_common())

    def summary(self) -> str:
        """What `specetl build-shards` prints: the counts, then one line per rejection reason."""
        head = (
            f"{self.accepted} spectra in {len(self.shards)} shard(s) ({self.written} written, "
            f"{self.kept} unchanged), {len(self.rejected)} rejected -> {self.shards_dir}"
        )
        reasons = [f"  rejected, {r}: {n}" for r, n in self.rejected_by_reason.items()]
        return "\n".join([head, *reasons])
