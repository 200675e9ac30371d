"""Shard streaming: coverage, determinism, equal batch counts per rank, corrupt shards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import pytest
import torch
from test_model_fixtures import build_sample_shards

from model.data import DeviceCache, ShardError, ShardStream, list_shards, make_loader


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return build_sample_shards(tmp_path_factory.mktemp("model_data"))


def _ids(stream: ShardStream, workers: int = 0) -> list[float]:
    out = []
    for b in make_loader(stream):
        assert b["flux"].shape[1] == 3921 and b["flux"].dtype == torch.float32
        out += b["z"].tolist()
    return out


def test_stream_is_seeded_and_reshuffles_per_epoch(shards):
    info = list_shards(shards, "train")
    a = ShardStream(info, 4, seed=3, block_rows=8)
    first = _ids(a)
    assert first == _ids(ShardStream(info, 4, seed=3, block_rows=8))
    a.set_epoch(1)
    second = _ids(a)
    assert second != first and sorted(second) == sorted(first)
    # 28 rows, batch 4, one slot: all blocks, 7 full batches, no row twice
    assert len(first) == 28 and len(set(first)) == 28


def test_ranks_and_workers_get_equal_batch_counts_and_disjoint_rows(shards):
    info = list_shards(shards, "train")
    seen = []
    counts = []
    for rank in range(2):
        s = ShardStream(info, 3, seed=0, rank=rank, world_size=2, num_workers=2, block_rows=4)
        batches = list(make_loader(s))
        counts.append(len(batches))
        assert len(batches) == len(s)
        seen += [z for b in batches for z in b["z"].tolist()]
    assert counts[0] == counts[1] > 0
    assert len(seen) == len(set(seen))


def test_validation_stream_reads_everything_in_order(shards):
    info = list_shards(shards, "valid")
    with h5py.File(info[0].path) as f:
        want = f["z"][:].tolist()
    got = _ids(ShardStream(info, 4, shuffle=False))
    assert got == want


def test_device_cache_equal_per_rank(shards):
    info = list_shards(shards, "train")
    lens = [
        len(list(DeviceCache(info, 5, torch.device("cpu"), rank=r, world_size=2))) for r in range(2)
    ]
    assert lens[0] == lens[1] == 2


def test_corrupt_shard_error_names_file(shards, tmp_path):
    bad = tmp_path / "shards"
    shutil.copytree(shards, bad)
    victim = bad / "train" / "shard-00001.h5"
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 4096] = b"\0" * 4096
    victim.write_bytes(bytes(raw))
    with pytest.raises(ShardError, match=r"shard-00001\.h5.*corrupt"):
        list_shards(bad, "train")
    # without the checksum, an unreadable file still gives one line naming it
    victim.write_bytes(b"not an hdf5 file")
    info = list_shards(bad, "train", verify=False)
    with pytest.raises(ShardError, match=r"shard-00001\.h5"):
        list(make_loader(ShardStream(info, 4, block_rows=64)))


def test_missing_split_and_index(shards, tmp_path):
    with pytest.raises(ShardError, match="index"):
        list_shards(tmp_path, "train")
    idx = json.loads((shards / "index.json").read_text())
    idx["shards"] = [e for e in idx["shards"] if e["split"] != "test"]
    (tmp_path / "index.json").write_text(json.dumps(idx))
    with pytest.raises(ShardError, match="no 'test' shards"):
        list_shards(tmp_path, "test")
