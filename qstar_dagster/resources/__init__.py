"""Dagster resources: where the data lives and the lineage store in it."""


import os
from pathlib import Path

from dagster import ConfigurableResource

from qstar_dagster.lineage import LineageStore


def default_home() -> str:
    """$QSTAR_HOME, else ./.qstar, as an absolute path."""
    return str(Path(os.environ.get("QSTAR_HOME", ".qstar")).resolve())


class DataDirResource(ConfigurableResource):
    """The data directory: the store, checkpoints, exported datasets, the prompt inbox."""

    path: str = default_home()

    def subdir(self, name: str) -> Path:
        p = Path(self.path) / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def inbox(self) -> Path:
        return self.subdir("inbox")


class LineageStoreResource(ConfigurableResource):
    path: str = str(Path(default_home()) / "lineage.duckdb")

    def store(self) -> LineageStore:
        return LineageStore(self.path)
