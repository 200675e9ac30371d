"""The redshift-aware spectrum autoencoder, its losses, data loading and trainer.

Public entry points: `model.autoencoder.SpectrumAutoencoder`, `model.losses` (fidelity_loss,
similarity_loss, consistency_loss), `model.train.train` / `TrainConfig`, and
`model.objectives.evaluate` / `model.train.load_model` for evaluating a run (checkpoints:
`model.checkpoint`). This package depends on the shard format only, never on `etl`.
"""
