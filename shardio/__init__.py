"""The shard format, owned by one module (:mod:`shardio.format`) that both ``etl`` (which writes
shards) and ``model`` (which reads them) import; it imports neither (numpy and h5py only).
Everything else keeps the one-way rule: ``model`` never imports ``etl``.
"""

from shardio.format import (
    CHUNK_ROWS,
    FORMAT,
    FORMAT_VERSION,
    ID_DTYPE,
    ROW_DATASETS,
    SPLITS,
    V1_DATASETS,
    V1_OBJECT_KEY,
    ShardError,
    ShardInfo,
    ShardWriter,
    index_path,
    index_sha256,
    list_shards,
    object_key,
    read_rows,
    read_shard,
    read_wave_obs,
    row_datasets,
    sha256_file,
    specobjid_strings,
    write_shard,
)

__all__ = [
    "CHUNK_ROWS",
    "FORMAT",
    "FORMAT_VERSION",
    "ID_DTYPE",
    "ROW_DATASETS",
    "SPLITS",
    "V1_DATASETS",
    "V1_OBJECT_KEY",
    "ShardError",
    "ShardInfo",
    "ShardWriter",
    "index_path",
    "index_sha256",
    "list_shards",
    "object_key",
    "read_rows",
    "read_shard",
    "read_wave_obs",
    "row_datasets",
    "sha256_file",
    "specobjid_strings",
    "write_shard",
]
