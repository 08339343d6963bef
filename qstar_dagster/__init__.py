"""qstar-dagster: the Q* data factory (step-level supervision data and checkpoints as Dagster assets)."""

import os

# Model loading and saving draw progress bars (transformers, huggingface_hub): carriage-return
# noise in Dagster's run logs and the CLI's output, where each stage logs its own progress.
# Read when huggingface_hub is imported, hence here; HF_HUB_DISABLE_PROGRESS_BARS=0 keeps them.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

__version__ = "0.1.0"
