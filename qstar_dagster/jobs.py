"""Orchestration: the refresh job with its schedule and sensor, and the expert-iteration round.

- `refresh` re-materializes a prompt set's rollouts, Monte Carlo and oracle labels, label
  agreement and datasets, retrying transient failures; GPU assets keep their `gpu` pool.
- `refresh_schedule` (daily, shipped stopped) asks for `refresh` on every prompt set whose
  prompt_set materialization is newer than its rollouts'.
- `prompt_set_refresh_sensor` does the same as soon as a prompt set is materialized, so a
  file dropped in the inbox flows through `prompt_inbox_sensor` -> prompt_set -> refresh.
- `expert_iteration_round` runs one full round (`qstar_dagster/rounds.py`).
"""

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    AssetSelection,
    Backoff,
    Config,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    EventLogEntry,
    OpExecutionContext,
    RetryPolicy,
    RunRequest,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    asset_sensor,
    define_asset_job,
    job,
    op,
    schedule,
)
from pydantic import Field

from qstar_dagster.assets.prompts import prompt_set_partitions
from qstar_dagster.rounds import ROUND_LABELERS, RoundSpec

_ROUND = RoundSpec()

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


class RoundConfig(Config):
    round: int = Field(1, description="round to run; round k uses round k-1's policy and PRM")
    train_set: str = _ROUND.train_set
    test_set: str = _ROUND.test_set
    train_problems: int = Field(_ROUND.train_problems, description="rollouts on the first n training problems")
    labeler: str = Field(_ROUND.labeler, description=f"{' or '.join(ROUND_LABELERS)}: whose step labels the PRM "
                         "and the step pairs learn from")


@op(description="Run one expert-iteration round: rollouts, labels, datasets, training, evaluation.")
def run_round_op(context: OpExecutionContext, config: RoundConfig) -> dict:
    from qstar_dagster.definitions import make_definitions
    from qstar_dagster.lineage import LineageStore
    from qstar_dagster.resources import default_store_path
    from qstar_dagster.rounds import make_executor, run_round

    defs = make_definitions()
    execute = make_executor(defs, context.instance, context.log.info)
    out = run_round(LineageStore(default_store_path()), execute,
                    RoundSpec(round=config.round, train_set=config.train_set, test_set=config.test_set,
                              train_problems=config.train_problems, labeler=config.labeler))
    return {"round": out["round"], "policy": out["policy"], "prm": out["prm"]}


@job(description="One full expert-iteration round (each stage runs as its own run of this instance).")
def expert_iteration_round():
    run_round_op()
