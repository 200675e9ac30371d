"""Orchestration that composes `etl` and `model` (neither imports the other); never imports click.

- :mod:`workflows.demo`: ``specetl demo``, the whole pipeline offline, one function per step;
- :mod:`workflows.spectra`: spec-lite files outside the shards (``specetl embed --spectra``) and
  the explorer page with its spectra (``specetl explore``).
"""
