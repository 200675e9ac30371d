"""The shard format, owned by one package that both ``etl`` (which writes shards) and ``model``
(which reads them) import; it imports neither (numpy and h5py only). Everything else keeps the
one-way rule: ``model`` never imports ``etl``.

- :mod:`shardio.format`: one shard file: its datasets, writer, reader, ``ShardError``, ``SPLITS``;
- :mod:`shardio.readers`: a shards folder: the index listing, the grid, rows of any version;
- :mod:`shardio.columns`: the FITS column cards (unit, description, UCD) of the tables both
  sides write (``catalog.fits``, embeddings).
"""

from shardio.format import (
    CHUNK_ROWS,
    FORMAT,
    FORMAT_VERSION,
    ID_DTYPE,
    OPTIONAL_DATASETS,
    ROW_DATASETS,
    SPLITS,
    V1_DATASETS,
    ShardError,
    ShardWriter,
    object_key,
    read_shard,
    row_datasets,
    sha256_file,
    write_shard,
)
from shardio.readers import (
    V1_OBJECT_KEY,
    ShardInfo,
    index_path,
    index_sha256,
    list_shards,
    read_rows,
    read_wave_obs,
    specobjid_strings,
)

__all__ = [
    "CHUNK_ROWS",
    "FORMAT",
    "FORMAT_VERSION",
    "ID_DTYPE",
    "OPTIONAL_DATASETS",
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
