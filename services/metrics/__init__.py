"""The training-metadata service: runs, hyperparameters and per-epoch metrics (issue 7)."""
