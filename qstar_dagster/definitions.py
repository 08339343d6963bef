"""The Dagster code location: `dagster dev -w workspace.yaml` loads `defs` from here."""

from dagster import AssetSelection, Definitions, define_asset_job

from qstar_dagster.assets.policy import base_policy
from qstar_dagster.assets.prompts import prompt_inbox_sensor, prompt_set, prompt_set_partitions
from qstar_dagster.assets.rollouts import tot_rollouts
from qstar_dagster.resources import DataDirResource, LineageStoreResource, default_store_path
from qstar_dagster.resources.compute import ComputeResource

# The embedded pipeline's stages per prompt set (one partition each); later per-set stages
# join it as they land. A Dagster job has one partitioning, so the unpartitioned base policy
# is its own job; `qstar demo` runs prompt sets, then the base policy, then the later stages.
embedded_pipeline = define_asset_job(
    "embedded_pipeline", selection=AssetSelection.all() - AssetSelection.assets(base_policy),
    partitions_def=prompt_set_partitions,
    description="Every per-prompt-set stage of the factory for one prompt set.",
)
base_policy_job = define_asset_job(
    "base_policy_job", selection=AssetSelection.assets(base_policy),
    description="Train (or load) and evaluate the base policy.",
)


def make_definitions(data_dir: str | None = None) -> Definitions:
    """Definitions whose resources point at `data_dir` (default: $QSTAR_HOME or ./.qstar)."""
    data = DataDirResource(path=data_dir)
    store = LineageStoreResource(path=str(default_store_path(data_dir)) if data_dir else None)
    return Definitions(
        assets=[prompt_set, base_policy, tot_rollouts],
        jobs=[embedded_pipeline, base_policy_job],
        sensors=[prompt_inbox_sensor],
        resources={"data_dir": data, "store": store, "compute": ComputeResource()},
    )


defs = make_definitions()
