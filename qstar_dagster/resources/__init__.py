"""Dagster resources: where the data lives and the lineage store in it.

Paths left unset resolve when used, from $QSTAR_HOME (default ./.qstar), not when this
module is imported, so that the environment of the process that runs a step decides."""

import os
from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

from qstar_dagster.lineage import LineageStore


def default_home() -> str:
    """$QSTAR_HOME, else ./.qstar, as an absolute path."""
    return str(Path(os.environ.get("QSTAR_HOME", ".qstar")).resolve())


def default_store_path(home: str | Path | None = None) -> str | Path:
    """$QSTAR_STORE when set (a shared store's postgresql:// URL, or a DuckDB file), else the
    data directory's own file (default data directory: $QSTAR_HOME or ./.qstar)."""
    return os.environ.get("QSTAR_STORE") or Path(home or default_home()) / "lineage.duckdb"


class DataDirResource(ConfigurableResource):
    """The data directory: the store, checkpoints, exported datasets, the prompt inbox."""

    path: str | None = Field(None, description="data directory; unset: $QSTAR_HOME or ./.qstar")

    @property
    def root(self) -> Path:
        return Path(self.path or default_home())

    def subdir(self, name: str) -> Path:
        p = self.root / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def inbox(self) -> Path:
        return self.subdir("inbox")


class LineageStoreResource(ConfigurableResource):
    path: str | None = Field(None, description="a DuckDB file, or a shared store's postgresql:// URL; unset: "
                                               "$QSTAR_STORE, else lineage.duckdb in the data directory")

    def store(self) -> LineageStore:
        return LineageStore(self.path or default_store_path())
