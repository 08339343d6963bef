"""Recording each materialization in the store's runs table; which rollout a stage of a
prompt-set partition works on."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import duckdb
from dagster import AssetExecutionContext, AssetKey, AssetRecordsFilter

import qstar_dagster
from qstar_dagster.lineage import LineageStore
from qstar_dagster.lineage.rollouts import resolve_rollout


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


def start_run(context, store: LineageStore, asset_key: str, config: dict[str, Any] | None,
              code_version: str | None) -> RunRef:
    """Record this run of `asset_key` (and partition) as started; say so in the log when
    earlier runs are found dead. For the steps of a graph-backed asset too, which have no
    `context.asset_key` of their own."""
    partition = context.partition_key if context.has_partition_key else None
    if died := store.begin_run(context.run_id, asset_key, partition, config,
                               f"{qstar_dagster.__version__}/{code_version}"):
        context.log.warning(f"{died} earlier run(s) of {asset_key}{f'[{partition}]' if partition else ''} died "
                            "(their process is gone): marked interrupted in the store's runs table")
    return RunRef(store, context.run_id, asset_key, partition)


def ensure_run(context, store: LineageStore, asset_key: str, config: dict[str, Any] | None,
               code_version: str | None) -> None:
    """For a later step of a multi-step asset: record the run if no step of it has. A run
    re-executed from a failure runs only the failed steps and those after them, so the step
    that records the run (the plan) may not be among them."""
    if not store.has_run(context.run_id, asset_key, context.partition_key if context.has_partition_key else None):
        start_run(context, store, asset_key, config, code_version)


@contextmanager
def recorded_run(context: AssetExecutionContext, store: LineageStore, config: dict[str, Any] | None):
    ref = start_run(context, store, context.asset_key.to_user_string(), config,
                    context.assets_def.code_versions_by_key.get(context.asset_key))
    asset_key, partition = ref.asset_key, ref.partition
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


def partition_rollout(context: AssetExecutionContext, store: LineageStore, rollout_id: str | None) -> str:
    """The rollout a stage of this prompt-set partition works on: the one its config names;
    else the one the partition's latest `tot_rollouts` materialization made (in a round, the
    run's own: a reused rollout keeps its old rows, so "the store's latest" can be another);
    else the store's latest rollout of the prompt set."""
    key = context.partition_key
    if rollout_id is None:
        records = context.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey("tot_rollouts"), asset_partitions=[key]), limit=1).records
        made = records[0].asset_materialization.metadata.get("rollout_id") if records else None
        if made is not None:
            try:
                return resolve_rollout(store, key, made.value)
            except LookupError:  # this instance knows a rollout the store does not (another data directory)
                context.log.warning(f"tot_rollouts[{key}] last made {made.value}, which {store.path} does not "
                                    "hold; using the store's latest rollout of the prompt set")
    return resolve_rollout(store, key, rollout_id)
