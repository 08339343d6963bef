"""Orchestration: the refresh job with its schedule and sensor (the expert-iteration round's
job is in `definitions.py`: its op runs the code location's other jobs).

- `refresh` re-materializes a prompt set's rollouts, Monte Carlo and oracle labels, label
  agreement and datasets, retrying transient failures; GPU assets keep their `gpu` pool.
- `refresh_schedule` (daily, shipped stopped) asks for `refresh` on every prompt set whose
  prompt_set materialization is newer than its rollouts'.
- `prompt_set_refresh_sensor` does the same as soon as a prompt set is materialized, so a
  file dropped in the inbox flows through `prompt_inbox_sensor` -> prompt_set -> refresh.
"""

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    AssetSelection,
    Backoff,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    EventLogEntry,
    RetryPolicy,
    RunRequest,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    asset_sensor,
    define_asset_job,
    schedule,
)

from qstar_dagster.assets.prompts import prompt_set_partitions

REFRESH_ASSETS = ("tot_rollouts", "mc_labels", "oracle_labels", "label_agreement", "step_datasets")

refresh_job = define_asset_job(
    "refresh", selection=AssetSelection.assets(*REFRESH_ASSETS), partitions_def=prompt_set_partitions,
    op_retry_policy=RetryPolicy(max_retries=2, delay=30, backoff=Backoff.EXPONENTIAL),
    description="Rollouts, Monte Carlo and oracle labels, label agreement and datasets for one prompt set "
    "(judge labels are left to an explicit run: they call the judge model).",
)


def stale_prompt_sets(instance) -> list[tuple[str, int]]:
    """(prompt set, storage id of its latest prompt_set materialization) for every prompt set
    materialized after its rollouts were (or never rolled out)."""

    def latest(asset: str, key: str):
        records = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[key]), limit=1).records
        return records[0].storage_id if records else None

    out = []
    for key in instance.get_dynamic_partitions(prompt_set_partitions.name):
        prompts, rolled = latest("prompt_set", key), latest("tot_rollouts", key)
        if prompts is not None and (rolled is None or rolled < prompts):
            out.append((key, prompts))
    return out


@schedule(job=refresh_job, cron_schedule="0 3 * * *", default_status=DefaultScheduleStatus.STOPPED,
          description="Daily: refresh every prompt set whose prompts changed since its rollouts were made.")
def refresh_schedule(context: ScheduleEvaluationContext):
    for key, storage_id in stale_prompt_sets(context.instance):
        yield RunRequest(run_key=f"refresh:{key}:{storage_id}", partition_key=key)


@asset_sensor(asset_key=AssetKey("prompt_set"), job=refresh_job, minimum_interval_seconds=30,
              default_status=DefaultSensorStatus.STOPPED,
              description="A new prompt set version (e.g. from the inbox) flows on to rollouts, labels and datasets.")
def prompt_set_refresh_sensor(context: SensorEvaluationContext, asset_event: EventLogEntry):
    key = asset_event.dagster_event.partition if asset_event.dagster_event else None
    if key:
        yield RunRequest(run_key=f"refresh:{key}:{asset_event.run_id}", partition_key=key)
