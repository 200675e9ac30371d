"""SYNTHETIC stand-ins for the archive, part of the product so an installed wheel can use them.

- :mod:`etl.synthetic.from_real`: the bundled real galaxies moved to new redshifts (scale tests);
- :mod:`etl.synthetic.population`: the bagpipes physics of a galaxy population with known
  parameters (bagpipes is imported lazily: ``pip install specetl[population]``);
- :mod:`etl.synthetic.population_corpus`: that population written as spec-lite files and a
  catalogue whose ``SYNTHETIC`` column travels into the shards and the embedding;
- :mod:`etl.synthetic.real_sample`: shards of the bundled real galaxies (sim-to-real checks).

``python -m etl.synthetic population|from-real --n N --data-dir DATA`` writes either corpus.
"""
