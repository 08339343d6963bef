"""Shared by the benchmarks (run as scripts from the repository root: bench/ is on sys.path)."""

from __future__ import annotations

import sys


def default_model() -> str:
    """The latest base policy recorded in the store of $QSTAR_HOME (as left by `make demo`)."""
    from qstar_dagster.lineage import LineageStore
    from qstar_dagster.resources import default_store_path

    path = default_store_path()  # $QSTAR_STORE (a shared store's URL) or the data directory's file
    row = LineageStore(path).latest_checkpoint("policy", base_only=True) \
        if isinstance(path, str) or path.exists() else None
    if row is None:
        sys.exit(f"no base policy recorded in {path}; run `make demo` first, or pass --model PATH")
    return row["path"]
