"""specetl's ETL: release manifests, catalogue selection, downloads, preprocessing, shards.

This package never imports torch or click.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("specetl")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"
