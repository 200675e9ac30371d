"""The file a shard's HDF5 bytes go through: a write that fails never reaches HDF5.

HDF5 (2.0 here) does not survive a failed write: after the device fills under a write, closing
the file crashes the whole process (a segmentation fault in ``H5Fclose``, seen on a tmpfs with
the build's worker processes). A crashed Dask worker takes its scattered inputs with it, so the
build then reported "task failed (cancelled)" instead of "disk full", and left its temporary
file behind. :class:`FailSafeFile` is the file-like object h5py writes through instead: the
first write that fails (ENOSPC, EDQUOT, EIO, ...) is recorded, the bytes written so far move to
memory, the file on disk is emptied at once (its space goes back to the device), and every later
read and write is served from memory. HDF5 therefore finishes and closes a consistent file, and
the writer raises the recorded error afterwards in Python, where the build handles it.

The memory held after a failure is at most one shard, and only until the writer gives up.
"""

from __future__ import annotations

import io
import os
from pathlib import Path


class FailSafeFile(io.RawIOBase):
    """A binary read/write file at ``path`` (created or truncated) for ``h5py.File(obj, "w")``.

    ``error`` is None while every write has reached the disk; after the first failed write it is
    that ``OSError`` (with ``path`` as its filename) and the contents live in memory.
    """

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)
        self._disk = open(self.path, "w+b", buffering=0)  # noqa: SIM115 (closed in close())
        self._memory: io.BytesIO | None = None
        self.error: OSError | None = None

    @property
    def _active(self) -> io.RawIOBase | io.BytesIO:
        return self._disk if self._memory is None else self._memory

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._active.seek(offset, whence)

    def tell(self) -> int:
        return self._active.tell()

    def readinto(self, buffer) -> int:
        return self._active.readinto(buffer)

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if self._memory is not None:
            return self._memory.write(view)
        start, done = self._disk.tell(), 0
        try:
            while done < len(view):  # a raw write may be short just before the device fills
                n = self._disk.write(view[done:])
                done += n or 0
                if not n:
                    raise OSError(f"{self.path}: write returned 0 bytes")
        except OSError as err:
            self._to_memory(err)
            self._memory.seek(start + done)
            self._memory.write(view[done:])
        return len(view)

    def truncate(self, size: int | None = None) -> int:
        if self._memory is None:
            try:
                return self._disk.truncate(size)
            except OSError as err:
                self._to_memory(err)
        return self._memory.truncate(size)

    def flush(self) -> None:
        if self._memory is None and not self._disk.closed:
            self._disk.flush()

    def fsync(self) -> None:
        """fsync the file on disk (call before trusting it; raises the recorded error, if any)."""
        self.raise_error()
        os.fsync(self._disk.fileno())

    def raise_error(self) -> None:
        """Raise the first failed write's error, if a write failed."""
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        if not self.closed:
            self._disk.close()
            self._memory = None  # drop the bytes kept after a failure
        super().close()

    def _to_memory(self, err: OSError) -> None:
        """Keep the file in memory from now on and give the device its space back."""
        self.error = OSError(err.errno, err.strerror or str(err), str(self.path))
        self._disk.seek(0)
        self._memory = io.BytesIO(self._disk.read())
        try:
            self._disk.truncate(0)
        except OSError:
            pass  # the space comes back when the writer unlinks the file
