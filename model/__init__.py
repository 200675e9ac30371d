"""specetl's model: the redshift-aware spectrum autoencoder, its losses, data loading and training."""
