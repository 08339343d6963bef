"""The refresh job: one prompt set's rollouts, Monte Carlo and oracle labels, label agreement
and datasets, retrying transient failures (GPU assets keep their `gpu` pool). A backfill of it
refreshes many prompt sets; `automation.py` says when the same assets refresh on their own.
The expert-iteration round's job is in `definitions.py` (its op runs the code location's jobs)."""

from dagster import AssetSelection, Backoff, RetryPolicy, define_asset_job

from qstar_dagster.assets.prompts import prompt_set_partitions
from qstar_dagster.automation import REFRESH_ASSETS

refresh_job = define_asset_job(
    "refresh", selection=AssetSelection.assets(*REFRESH_ASSETS), partitions_def=prompt_set_partitions,
    op_retry_policy=RetryPolicy(max_retries=2, delay=30, backoff=Backoff.EXPONENTIAL),
    description="Rollouts, Monte Carlo and oracle labels, label agreement and datasets for one prompt set "
    "(judge labels are left to an explicit run: they call the judge model).",
)
