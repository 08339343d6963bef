"""The Dagster code location: `dagster dev -w workspace.yaml` loads `defs` from here."""

import os

from dagster import Definitions

from qstar_dagster.assets.datasets import step_datasets
from qstar_dagster.assets.evaluation import evaluation
from qstar_dagster.assets.labels import (
    consensus_labels,
    imported_labels,
    judge_labels,
    judge_model,
    label_agreement,
    mc_label_rates_sane,
    mc_labels,
    oracle_labels,
)
from qstar_dagster.assets.policy import base_policy
from qstar_dagster.assets.prompts import prompt_inbox_sensor, prompt_set
from qstar_dagster.assets.rollouts import tot_rollouts, trees_sound
from qstar_dagster.assets.training import dpo_policy, prm_model, rft_policy, step_ppo_policy
from qstar_dagster.automation import refresh_automation
from qstar_dagster.jobs import (
    base_policy_job,
    embedded_pipeline,
    evaluation_job,
    expert_iteration_round,
    judge_model_job,
    refresh_job,
    training_job,
)
from qstar_dagster.resources import DataDirResource, LineageStoreResource, default_store_path
from qstar_dagster.resources.compute import ComputeResource
from qstar_dagster.resources.judge import JudgeResource


def make_definitions(data_dir: str | None = None) -> Definitions:
    """Definitions whose resources point at `data_dir` (default: $QSTAR_HOME or ./.qstar)."""
    data = DataDirResource(path=data_dir)
    store = LineageStoreResource(path=str(default_store_path(data_dir)) if data_dir else None)
    return Definitions(
        assets=[prompt_set, base_policy, tot_rollouts, judge_model, mc_labels, judge_labels, oracle_labels,
                consensus_labels, imported_labels, label_agreement, step_datasets, prm_model, rft_policy, dpo_policy, step_ppo_policy,
                evaluation],
        jobs=[embedded_pipeline, base_policy_job, judge_model_job, training_job, evaluation_job, refresh_job,
              expert_iteration_round],
        asset_checks=[trees_sound, mc_label_rates_sane],
        sensors=[prompt_inbox_sensor, refresh_automation],
        resources={"data_dir": data, "store": store, "compute": ComputeResource(),
                   "judge": JudgeResource()},
        executor=_executor(),
    )


def _executor():
    """QSTAR_EXECUTOR=k8s: every step of a run in a Kubernetes job of its own (dagster-k8s's
    k8s_job_executor; a GPU asset's pod asks for a GPU through its op tags). Unset: Dagster's
    default, steps as processes of the run's host."""
    choice = os.environ.get("QSTAR_EXECUTOR", "")
    if choice in ("", "multiprocess"):
        return None
    if choice == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    raise ValueError(f"QSTAR_EXECUTOR must be k8s or multiprocess (or unset), got {choice!r}")


defs = make_definitions()
