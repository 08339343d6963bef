"""Filtered datasets: a prompt set's labeled rollout turned into training data (RFT, PRM
stepwise supervision, step-DPO and DPO pairs), recorded with their members and exported as
JSONL and Parquet under the data directory. Core: `qstar_dagster/datasets/build.py`.

(No `from __future__ import annotations`: Dagster reads these annotations.)"""

from dagster import AssetExecutionContext, AssetKey, MaterializeResult, MetadataValue, asset
from pydantic import Field

from qstar_dagster.assets._config import spec_config, to_spec
from qstar_dagster.assets._runs import partition_rollout, recorded_run
from qstar_dagster.assets.prompts import prompt_set_partitions
from qstar_dagster.automation import follows_inputs
from qstar_dagster.datasets.build import (
    KIND_FORMAT,
    KINDS,
    ROW_FORMAT,
    DatasetSpec,
    build_dataset,
    label_balance,
    record,
)
from qstar_dagster.plots import bar_plots_markdown
from qstar_dagster.resources import DataDirResource, LineageStoreResource


class DatasetsConfig(spec_config(DatasetSpec, exclude=("kind",))):
    rollout_id: str | None = Field(None, description="rollout; unset: the one the partition's tot_rollouts "
                                   "last made")
    kinds: list[str] = Field(list(KINDS), description=f"which datasets: {', '.join(KINDS)}")


@asset(
    partitions_def=prompt_set_partitions,
    group_name="datasets",
    # the rows change with the format, and so do dataset ids
    code_version=".".join(map(str, [ROW_FORMAT, *KIND_FORMAT.values()])),
    kinds={"duckdb", "parquet"},
    deps=[AssetKey("tot_rollouts"), AssetKey("mc_labels"), AssetKey("judge_labels"), AssetKey("consensus_labels"),
          AssetKey("oracle_labels"), AssetKey("imported_labels")],
    automation_condition=follows_inputs(),
    description="Training data from a labeled rollout: RFT (right, deduplicated solutions), PRM stepwise "
    "supervision (TRL's format, soft labels kept, plus Math-Shepherd's ки export), step-DPO pairs and DPO pairs. "
    "Each dataset is a datasets row with its member nodes, exported as JSONL and Parquet.",
)
def step_datasets(context: AssetExecutionContext, config: DatasetsConfig, store: LineageStoreResource,
                  data_dir: DataDirResource) -> MaterializeResult:
    lineage = store.store()
    specs = [to_spec(config, DatasetSpec, kind=k) for k in config.kinds]
    with recorded_run(context, lineage, config.model_dump()) as run:
        rollout_id = partition_rollout(context, lineage, config.rollout_id)
        built = [build_dataset(lineage, rollout_id, s, data_dir.subdir("datasets"), context.run_id) for s in specs]
        with lineage.transaction() as con:
            for b in built:
                record(lineage, con, b)
            run.finish(con)
    metadata = {"rollout_id": rollout_id, "labeler": config.labeler}
    for b in built:
        metadata[f"{b.kind}_dataset_id"] = b.dataset_id
        metadata[f"{b.kind}_rows"] = len(b.rows)
        metadata[f"{b.kind}_path"] = MetadataValue.path(str(b.files["jsonl"]))
        context.log.info(f"{b.kind}: {len(b.rows)} rows -> {b.files['jsonl']}{' (already recorded)' if b.reused else ''}")
    prm = next((b for b in built if b.kind == "prm"), None)
    if prm:
        balance = label_balance(prm.rows)
        metadata["prm_label_balance"] = MetadataValue.md(bar_plots_markdown([
            ("PRM labels per step index", "steps", {"positive": [(i, p) for i, (p, _) in balance.items()],
                                                    "negative": [(i, n) for i, (_, n) in balance.items()]})]))
    return MaterializeResult(metadata=metadata)
