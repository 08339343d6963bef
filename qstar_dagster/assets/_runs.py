"""Recording each materialization in the store's runs table."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import duckdb
from dagster import AssetExecutionContext

import qstar_dagster
from qstar_dagster.lineage import LineageStore


@dataclass(frozen=True)
class RunRef:
    store: LineageStore
    run_id: str
    asset_key: str
    partition: str | None

    def finish(self, con: duckdb.DuckDBPyConnection) -> None:
        """Mark the run a success inside the transaction that writes its results, so the
        two commit together."""
        self.store.end_run(con, self.run_id, self.asset_key, self.partition, "success")


@contextmanager
def recorded_run(context: AssetExecutionContext, store: LineageStore, config: dict[str, Any] | None):
    asset_key = context.asset_key.to_user_string()
    partition = context.partition_key if context.has_partition_key else None
    code_version = f"{qstar_dagster.__version__}/{context.assets_def.code_versions_by_key.get(context.asset_key)}"
    ref = RunRef(store, context.run_id, asset_key, partition)
    store.begin_run(context.run_id, asset_key, partition, config, code_version)
    try:
        yield ref
    except BaseException:
        with store.transaction() as con:
            store.end_run(con, ref.run_id, asset_key, partition, "failure")
        raise


class _ToDagster(logging.Handler):
    def __init__(self, context: AssetExecutionContext):
        super().__init__(logging.INFO)
        self.context = context

    def emit(self, record: logging.LogRecord) -> None:
        (self.context.log.warning if record.levelno >= logging.WARNING else self.context.log.info)(record.getMessage())


@contextmanager
def forward_logs(context: AssetExecutionContext):
    """Show the core's progress logs (training steps, generation tokens/s) in the run's
    Dagster log, where the researcher watching the UI looks."""
    logger = logging.getLogger("qstar_dagster")
    handler, level = _ToDagster(context), logger.level
    logger.addHandler(handler)
    logger.setLevel(min(level or logging.INFO, logging.INFO))
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
