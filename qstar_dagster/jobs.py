"""The code location's jobs. Each is an asset job of one partitioning (a Dagster job has one),
so a round, a refresh or a training run is an ordinary run or backfill that the run queue,
the executor and the UI see.

The refresh job reruns one prompt set's rollouts, Monte Carlo and oracle labels, label
agreement and datasets, retrying transient failures (GPU assets keep their `gpu` pool); a
backfill of it refreshes many prompt sets; `automation.py` says when the same assets
refresh on their own. The round job is one expert-iteration round (`rounds.py`)."""

from dagster import AssetSelection, Backoff, RetryPolicy, define_asset_job

from qstar_dagster.assets.evaluation import evaluation
from qstar_dagster.assets.labels import judge_model
from qstar_dagster.assets.policy import base_policy
from qstar_dagster.assets.prompts import prompt_set_partitions
from qstar_dagster.assets.training import dpo_policy, prm_model, rft_policy, step_ppo_policy
from qstar_dagster.automation import REFRESH_ASSETS
from qstar_dagster.rounds import ROUND_ASSETS, ROUND_JOB

# Every asset but the unpartitioned models (base policy, judge) is partitioned by prompt set:
# the data stages by the set they search, label and build from; the trained checkpoints and
# their evaluation by the training set they learn from.
TRAINED = AssetSelection.assets(prm_model, rft_policy, dpo_policy, step_ppo_policy)
UNPARTITIONED = AssetSelection.assets(base_policy, judge_model)
embedded_pipeline = define_asset_job(
    "embedded_pipeline", selection=AssetSelection.all() - UNPARTITIONED - TRAINED - AssetSelection.assets(evaluation),
    partitions_def=prompt_set_partitions,
    description="The data stages for one prompt set: the prompt set, rollouts, step labels and datasets.",
)
base_policy_job = define_asset_job(
    "base_policy_job", selection=AssetSelection.assets(base_policy),
    description="Train (or load) and evaluate the base policy.",
)
training_job = define_asset_job(
    "training_job", selection=TRAINED, partitions_def=prompt_set_partitions,
    description="Train the PRM, RFT and DPO checkpoints on a training prompt set's datasets, and step-PPO on "
    "its problems.",
)
evaluation_job = define_asset_job(
    "evaluation_job", selection=AssetSelection.assets(evaluation), partitions_def=prompt_set_partitions,
    description="Evaluate a training prompt set's policies (alone and with its PRMs) on a held-out prompt set.",
)
judge_model_job = define_asset_job(
    "judge_model_job", selection=AssetSelection.assets(judge_model),
    description="Train the built-in step judge on a training prompt set's rollouts.",
)
expert_iteration_round = define_asset_job(
    ROUND_JOB, selection=AssetSelection.assets(*ROUND_ASSETS), partitions_def=prompt_set_partitions,
    description="One expert-iteration round on a training prompt set (the partition): rollouts by the previous "
    "round's policy, labels, datasets, the PRM, RFT, DPO and step-PPO checkpoints, evaluation. `qstar round --round k` "
    "runs it with round k-1's checkpoints in its config and tag qstar/round=k.",
)
refresh_job = define_asset_job(
    "refresh", selection=AssetSelection.assets(*REFRESH_ASSETS), partitions_def=prompt_set_partitions,
    op_retry_policy=RetryPolicy(max_retries=2, delay=30, backoff=Backoff.EXPONENTIAL),
    description="Rollouts, Monte Carlo and oracle labels, label agreement and datasets for one prompt set "
    "(judge labels are left to an explicit run: they call the judge model).",
)
