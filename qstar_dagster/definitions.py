"""The Dagster code location: `dagster dev -w workspace.yaml` loads `defs` from here."""

from dagster import AssetSelection, Definitions, define_asset_job

from qstar_dagster.assets.prompts import prompt_inbox_sensor, prompt_set, prompt_set_partitions
from qstar_dagster.resources import DataDirResource, LineageStoreResource, default_store_path

# The embedded pipeline, partitioned by prompt set; later stages join it as they land.
embedded_pipeline = define_asset_job(
    "embedded_pipeline", selection=AssetSelection.all(), partitions_def=prompt_set_partitions,
    description="Every stage of the factory for one prompt set.",
)


def make_definitions(data_dir: str | None = None) -> Definitions:
    """Definitions whose resources point at `data_dir` (default: $QSTAR_HOME or ./.qstar)."""
    data = DataDirResource(path=data_dir)
    store = LineageStoreResource(path=str(default_store_path(data_dir)) if data_dir else None)
    return Definitions(
        assets=[prompt_set],
        jobs=[embedded_pipeline],
        sensors=[prompt_inbox_sensor],
        resources={"data_dir": data, "store": store},
    )


defs = make_definitions()
