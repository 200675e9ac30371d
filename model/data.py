"""Streaming batches from specetl HDF5 shards (docs/shard-format.md) into training.

Reads the shards through `shardio` (the shard format's one owner); does not import `etl`. Two
paths:
- `ShardStream`: an IterableDataset. Each split is cut into contiguous row blocks (chunk-aligned,
  `block_rows` rows); every epoch all ranks and workers draw the same block permutation from
  (seed, epoch), and block b goes to slot b mod (world_size × workers), slot = rank·workers +
  worker. Cutting blocks rather than whole shards keeps the split even when there are fewer
  shards than slots. Files are opened inside `__iter__`, i.e. in the worker after fork
  (an h5py handle must not cross a fork). Rows of a few blocks are shuffled in a buffer, then
  emitted as batches. Every slot yields the same number of batches (the minimum over slots),
  so every DDP rank runs the same number of steps (a rank with one more step would hang).
- `DeviceCache`: the whole split as tensors on the device (`--cache-on-device`), permuted each
  epoch with a generator seeded from (seed, epoch).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

# the shard format's names, used here and re-exported for model's modules and the CLI
from shardio import (  # noqa: F401
    ShardError,
    ShardInfo,
    index_path,
    index_sha256,
    list_shards,
    read_wave_obs,
)
from shardio import sha256_file as file_sha256  # noqa: F401

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]


class _Reader:
    """Open-on-demand h5py handles for one iterator (i.e. one worker); errors name the file."""

    def __init__(self) -> None:
        self.files: dict[Path, h5py.File] = {}

    def read(self, path: Path, start: int, stop: int) -> dict[str, np.ndarray]:
        try:
            f = self.files.get(path)
            if f is None:
                f = self.files[path] = h5py.File(path, "r")
            # contiguous slices touch whole chunks only (shards are chunked along rows)
            return {
                "flux": f["flux"][start:stop],
                "ivar": f["ivar"][start:stop],
                "z": f["z"][start:stop],
            }
        except (OSError, KeyError, ValueError) as e:
            raise ShardError(f"cannot read shard {path} rows {start}:{stop}: {e}") from e

    def close(self) -> None:
        for f in self.files.values():
            f.close()
        self.files.clear()


class ShardStream(IterableDataset):
    """Batches (dicts of CPU tensors `flux`, `ivar` (B, M) float32, `z` (B,)) from shards.

    Use with `DataLoader(stream, batch_size=None, num_workers=W)` and call `set_epoch` before
    each epoch. With `shuffle=False` (validation) rows come in order and the last batch may be
    short; with `shuffle=True` every slot yields exactly `batches_per_slot()` full batches.
    """

    def __init__(
        self,
        shards: list[ShardInfo],
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        shuffle: bool = True,
        block_rows: int = 256,
        buffer_blocks: int = 8,
    ) -> None:
        self.shards, self.batch_size, self.seed = shards, batch_size, seed
        # num_workers = DataLoader worker processes (0 = main process, which counts as 1 slot)
        self.loader_workers = num_workers
        self.rank, self.world_size, self.num_workers = rank, world_size, max(num_workers, 1)
        self.shuffle, self.block_rows, self.buffer_blocks = shuffle, block_rows, buffer_blocks
        self.epoch = 0
        # A small split (a demo, a test) could have fewer blocks than (rank, worker) slots,
        # leaving some slot empty; shrink the blocks so every slot gets rows.
        total = sum(s.rows for s in shards)
        block_rows = max(1, min(block_rows, total // (2 * self.n_slots)))
        self.block_rows = block_rows
        self.blocks = [
            (i, a, min(a + block_rows, s.rows))
            for i, s in enumerate(shards)
            for a in range(0, s.rows, block_rows)
        ]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def n_slots(self) -> int:
        return self.world_size * self.num_workers

    def _plan(self) -> list[list[tuple[int, int, int]]]:
        """Blocks of each slot for this epoch; identical on every rank and worker."""
        order = np.arange(len(self.blocks))
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(order)
        slots: list[list[tuple[int, int, int]]] = [[] for _ in range(self.n_slots)]
        for j, b in enumerate(order):
            slots[j % self.n_slots].append(self.blocks[b])
        return slots

    def batches_per_slot(self) -> int:
        """Full batches each (rank, worker) yields per epoch when shuffling (same for all)."""
        rows = [sum(b - a for _, a, b in s) for s in self._plan()]
        return min(rows) // self.batch_size

    def __len__(self) -> int:  # batches this rank yields per epoch
        if self.shuffle:
            return self.batches_per_slot() * self.num_workers
        rows = sum(s.rows for s in self.shards)
        return -(-rows // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != self.num_workers:
            raise RuntimeError("ShardStream.num_workers must equal the DataLoader's num_workers")
        if not self.shuffle:
            yield from self._iter_sequential(worker)
            return
        quota = self.batches_per_slot()
        if quota == 0:
            raise ShardError(
                f"too few rows for batch size {self.batch_size} × {self.n_slots} "
                "(ranks × workers): lower --batch-size or --workers"
            )
        blocks = self._plan()[self.rank * self.num_workers + worker]
        rng = np.random.default_rng([self.seed, self.epoch, 1 + self.rank, 1 + worker])
        reader = _Reader()
        emitted, pending = 0, []
        try:
            for k in range(0, len(blocks), self.buffer_blocks):
                parts = [self.shards[i].path for i, _, _ in blocks[k : k + self.buffer_blocks]]
                parts = [
                    reader.read(p, a, b)
                    for p, (_, a, b) in zip(parts, blocks[k : k + self.buffer_blocks], strict=True)
                ]
                buf = {key: np.concatenate([p[key] for p in pending + parts]) for key in parts[0]}
                perm = rng.permutation(len(buf["z"]))
                n_full = len(perm) // self.batch_size
                for j in range(n_full):
                    if emitted == quota:
                        return
                    idx = np.sort(perm[j * self.batch_size : (j + 1) * self.batch_size])
                    yield {key: torch.from_numpy(v[idx]) for key, v in buf.items()}
                    emitted += 1
                rest = perm[n_full * self.batch_size :]
                pending = [{key: v[rest] for key, v in buf.items()}] if len(rest) else []
        finally:
            reader.close()

    def _iter_sequential(self, worker: int) -> Iterator[Batch]:
        """In-order batches; batch j goes to slot j mod n_slots (all rows, once)."""
        reader = _Reader()
        slot = self.rank * self.num_workers + worker
        try:
            j = 0
            for s in self.shards:
                for a in range(0, s.rows, self.batch_size):
                    if j % self.n_slots == slot:
                        d = reader.read(s.path, a, min(a + self.batch_size, s.rows))
                        yield {key: torch.from_numpy(v) for key, v in d.items()}
                    j += 1
        finally:
            reader.close()


class DeviceCache:
    """A whole split held as tensors on `device`; iterate per epoch like a loader."""

    def __init__(
        self,
        shards: list[ShardInfo],
        batch_size: int,
        device: torch.device,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        reader = _Reader()
        try:
            parts = [reader.read(s.path, 0, s.rows) for s in shards]
        finally:
            reader.close()
        self.data = {
            k: torch.from_numpy(np.concatenate([p[k] for p in parts])).to(device) for k in parts[0]
        }
        self.n = len(self.data["z"])
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.rank, self.world_size, self.device = rank, world_size, device
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.shuffle:
            return (self.n // self.world_size) // self.batch_size
        return -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        if not self.shuffle:
            for a in range(0, self.n, self.batch_size):
                yield {k: v[a : a + self.batch_size] for k, v in self.data.items()}
            return
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        per_rank = self.n // self.world_size  # equal per rank: DDP needs equal step counts
        perm = torch.randperm(self.n, generator=g)[
            self.rank * per_rank : (self.rank + 1) * per_rank
        ]
        perm = perm.to(self.device)
        for j in range(len(self)):
            idx = perm[j * self.batch_size : (j + 1) * self.batch_size]
            yield {k: v.index_select(0, idx) for k, v in self.data.items()}


def make_loader(
    stream: ShardStream, pin_memory: bool = False, prefetch_factor: int = 4
) -> DataLoader:
    """DataLoader over a ShardStream: batches are built by the stream, so batch_size=None."""
    workers = stream.loader_workers
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=prefetch_factor if workers else None,
        persistent_workers=False,
    )


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Copy a batch to `device`; non_blocking overlaps the copy with compute for pinned memory."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
