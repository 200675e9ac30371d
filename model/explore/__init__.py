"""The offline explorer page of an embedding (`specetl explore`); see `model.explore.page`."""
