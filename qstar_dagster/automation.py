"""Declarative automation of the per-prompt-set refresh: what makes rollouts, labels and
datasets out of date, as `AutomationCondition`s that Dagster evaluates (the
`refresh_automation` sensor, shipped stopped: turn it on in the UI's Automation page).

- `tot_rollouts` runs when its prompt set's *content* changed: the prompt_set asset's data
  version is the set's content hash, so re-materializing an unchanged file (or the sensor
  seeing it again) starts no GPU work. It waits for a base policy and for running upstream work,
  and does not run for a prompt set whose blocking check (`not_empty`) failed.
- `mc_labels`, `oracle_labels`, `label_agreement` and `step_datasets` follow their inputs
  eagerly, ignoring the judge stages (they call a judge model: an explicit run's decision)
  and `imported_labels` (the inbox sensor's, only for PRM800K / Math-Shepherd / ProcessBench
  files), so a missing judge or imported label never holds the Monte Carlo path back.
"""

from dagster import AssetSelection, AutomationCondition, AutomationConditionSensorDefinition

# Made only by an explicit run (or the inbox sensor); never a reason for the refresh to wait or to run.
EXPLICIT_ONLY = AssetSelection.assets("judge_model", "judge_labels", "consensus_labels", "imported_labels")

REFRESH_ASSETS = ("tot_rollouts", "mc_labels", "oracle_labels", "label_agreement", "step_datasets")


def prompts_changed() -> AutomationCondition:
    """The prompt set's data version (its content hash) changed since the asset was last
    requested, its other inputs exist, and nothing upstream or of its own is running."""
    changed = AutomationCondition.any_deps_match(AutomationCondition.data_version_changed()).allow(
        AssetSelection.assets("prompt_set"))
    return (
        changed.since_last_handled()
        & ~AutomationCondition.any_deps_missing()
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
        & AutomationCondition.all_deps_blocking_checks_passed()
    ).with_label("prompt set content changed")


def follows_inputs() -> AutomationCondition:
    """Dagster's eager condition (inputs updated, none missing or running), judge stages
    ignored. Requested in the same run as the rollouts, where the blocking `trees_sound`
    check stops them if the trees are broken."""
    return AutomationCondition.eager().ignore(EXPLICIT_ONLY).with_label("eager, judge stages ignored")


refresh_automation = AutomationConditionSensorDefinition(
    "refresh_automation", target=AssetSelection.assets(*REFRESH_ASSETS), minimum_interval_seconds=30,
    description="Rollouts, Monte Carlo and oracle labels, label agreement and datasets follow a prompt set whose "
    "content changed (see qstar_dagster/automation.py).",
)
