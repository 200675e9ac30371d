"""A mirror that is a folder on disk, no server: ``--base-url file:///path/to/sas``.

:class:`FileResponse` answers a ``file://`` URL with just enough of a ``requests.Response`` for
:mod:`etl.download`, so a local copy of the archive goes through the same verification and
ledger as a download.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit


class FileResponse:
    """Just enough of a ``requests.Response`` for a ``file://`` archive (a local mirror on disk,
    no server): what :mod:`etl.download` reads when the base URL is ``file://…``."""

    def __init__(self, url: str):
        self.path = Path(unquote(urlsplit(url).path))
        self.status_code = 200 if self.path.is_file() else 404
        size = self.path.stat().st_size if self.status_code == 200 else 0
        self.headers = {"Content-Length": str(size)}

    def iter_content(self, n: int):
        with open(self.path, "rb") as f:
            while data := f.read(n):
                yield data

    def __enter__(self) -> FileResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        pass
