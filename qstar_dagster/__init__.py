"""qstar-dagster: the Q* data factory (step-level supervision data and checkpoints as Dagster assets)."""

__version__ = "0.1.0"
