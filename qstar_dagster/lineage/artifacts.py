"""Readers of what the stages record besides trees and labels: prompt-set figures, datasets,
checkpoints and evaluations."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from qstar_dagster.lineage.store import LineageStore, utcnow
from qstar_dagster.tasks.problem import DEFAULT_PROMPT_TEMPLATE, content_id

# --- prompt sets ------------------------------------------------------------------------------


def prompt_answers(store: LineageStore, prompt_set: str) -> list[dict]:
    """(prompt_id, reference_answer, answer_from) of the current version, in source order;
    answer_from is where a labeled file's answer came from (file, right_solution, unknown)."""
    return store.records("SELECT prompt_id, reference_answer, (meta->>'answer_from') AS answer_from FROM prompts "
                         "WHERE prompt_set = ? ORDER BY idx", [prompt_set])


def prompt_set_duplicates(store: LineageStore, prompt_set: str) -> int:
    """Rows of the current version's source that repeated an earlier problem."""
    rows = store.records("SELECT s.n_duplicates FROM prompt_sets s JOIN prompt_set_heads h USING (prompt_set, version) "
                         "WHERE prompt_set = ?", [prompt_set])
    return rows[0]["n_duplicates"] if rows else 0


def prompt_set_domain(store: LineageStore, prompt_set: str) -> str | None:
    [row] = store.records("SELECT any_value(domain) AS d FROM prompts WHERE prompt_set = ?", [prompt_set])
    return row["d"]


# --- datasets -----------------------------------------------------------------------------------


def dataset_row(store: LineageStore, dataset_id: str) -> dict | None:
    rows = store.records("SELECT * FROM datasets WHERE dataset_id = ?", [dataset_id])
    return rows[0] if rows else None


def latest_dataset(store: LineageStore, prompt_set: str, kind: str, labeler: str | None = None,
                   rollout_id: str | None = None) -> dict:
    """The most recent dataset of `kind` built from a rollout of `prompt_set` (that rollout,
    when given; for label-based kinds, from `labeler`'s labels); a clear error when none."""
    rows = store.records("""
        SELECT d.* FROM datasets d
        WHERE d.kind = ? AND (d.spec->>'rollout_id') IN (SELECT DISTINCT rollout_id FROM trees WHERE prompt_set = ?)
          AND (? IS NULL OR (d.spec->>'labeler') = ?) AND (? IS NULL OR (d.spec->>'rollout_id') = ?)
        ORDER BY d.created_at DESC LIMIT 1""", [kind, prompt_set, labeler, labeler, rollout_id, rollout_id])
    if not rows:
        raise LookupError(f"no {kind} dataset{f' from {labeler} labels' if labeler else ''} of prompt set "
                          f"{prompt_set!r}; materialize step_datasets for partition {prompt_set!r} first")
    return rows[0]


# --- checkpoints --------------------------------------------------------------------------------


def checkpoint_row(store: LineageStore, checkpoint_id: str) -> dict | None:
    """The recorded row, whether or not its files are still on disk (`store.checkpoint`
    checks both)."""
    rows = store.records("SELECT * FROM checkpoints WHERE checkpoint_id = ?", [checkpoint_id])
    return rows[0] if rows else None


def checkpoint_template(row: dict) -> str:
    """How a policy checkpoint is prompted (its config's template)."""
    config = row.get("config")
    return (json.loads(config) if isinstance(config, str) else config or {}).get("template") or DEFAULT_PROMPT_TEMPLATE


def checkpoints_of_prompt_set(store: LineageStore, kind: str, prompt_set: str) -> list[dict]:
    """The checkpoints of `kind` that belong to a training prompt set, oldest first: those
    trained on datasets of its rollouts, the checkpoints those started from (the base
    policy), and base policies trained on its reference solutions."""
    return store.records("""
        WITH trained AS (
            SELECT c.checkpoint_id, c.base FROM checkpoints c JOIN datasets d ON d.dataset_id = c.trained_on_dataset
            WHERE (d.spec->>'rollout_id') IN (SELECT DISTINCT rollout_id FROM trees WHERE prompt_set = ?))
        SELECT * FROM checkpoints
        WHERE kind = ? AND (checkpoint_id IN (SELECT checkpoint_id FROM trained)
                            OR checkpoint_id IN (SELECT base FROM trained)
                            OR split_part(trained_on_prompt_set, '@', 1) = ?)
        ORDER BY created_at""", [prompt_set, kind, prompt_set])


def latest_base_policy_id(store: LineageStore, prompt_set: str | None = None) -> str | None:
    """The most recently recorded base policy (made by no trainer), files or not; with
    `prompt_set`, one evaluated on it first (the policy of that set's domain)."""
    rows = store.records("""SELECT checkpoint_id FROM checkpoints c WHERE kind = 'policy' AND (config->>'trainer') IS NULL
                            ORDER BY EXISTS (SELECT 1 FROM evaluations e WHERE e.prompt_set = ?
                                             AND e.checkpoint_ids[1] = c.checkpoint_id) DESC, created_at DESC
                            LIMIT 1""", [prompt_set])
    return rows[0]["checkpoint_id"] if rows else None


def trained_from(store: LineageStore, base: str) -> dict[str, str]:
    """The latest checkpoint of each kind trained from `base`, keyed by kind ("prm", "judge")
    or, for policies, by trainer ("rft", "trl.DPOTrainer")."""
    rows = store.records("""
        SELECT kind, (config->>'trainer') AS trainer, arg_max(checkpoint_id, created_at) AS checkpoint_id
        FROM checkpoints WHERE base = ? GROUP BY 1, 2""", [base])
    return {(r["trainer"] if r["kind"] == "policy" else r["kind"]): r["checkpoint_id"] for r in rows}


# --- evaluations --------------------------------------------------------------------------------

# the stages that measure checkpoints: the base policy's own measurement when it is made, and
# the evaluation sweep (every N, every PRM); (details->>'stage') says which wrote a row
EVALUATION_STAGES = ("base_policy", "evaluation")


def evaluation_rows(checkpoint_ids: Sequence[str], figures: Mapping[str, float | None], *, stage: str,
                    prompt_set: str, version: str, settings: Mapping[str, Any], n: int | None,
                    run_id: str | None) -> list[dict]:
    """The evaluations table's one record shape: a row per method ('greedy', 'pass@8',
    'majority@8', 'prm_best_of_8:min', 'prm_vote@8', 'prm_step_accuracy', ...) of
    `checkpoint_ids` (a policy, or a policy and a PRM; a PRM alone) on a prompt-set version,
    measured by `stage` with `settings`; n: the problems (or steps) measured. A row is named by
    all of these but the figure, so measuring again the same way writes the same ids (with
    figures None: the ids to look up)."""
    if stage not in EVALUATION_STAGES:
        raise ValueError(f"evaluation rows come from {', '.join(EVALUATION_STAGES)}, got stage {stage!r}")
    details = {"stage": stage, "prompt_set": prompt_set, "version": version, "settings": dict(settings)}
    ids = list(checkpoint_ids)
    return [{"eval_id": content_id("ev", ids, method, details), "checkpoint_ids": ids, "prompt_set": prompt_set,
             "prompt_set_version": version, "method": method, "n": n, "accuracy": accuracy, "details": details,
             "created_run": run_id, "created_at": utcnow()} for method, accuracy in figures.items()]


def evaluations_by_id(store: LineageStore, eval_ids: Sequence[str]) -> list[dict]:
    """(eval_id, method, n, accuracy) of the recorded ones among `eval_ids`."""
    return store.records("SELECT eval_id, method, n, accuracy FROM evaluations WHERE eval_id IN (SELECT unnest(?))",
                         [list(eval_ids)])


def latest_sweep(store: LineageStore, prompt_set: str, version: str | None = None,
                 policy: str | None = None) -> list[dict[str, Any]]:
    """The evaluation sweep's rows on `prompt_set`, the latest per
    (checkpoints, method); of one prompt-set version and of one policy, when given."""
    return store.records("""
        SELECT checkpoint_ids, method, accuracy FROM (
            SELECT *, row_number() OVER (PARTITION BY checkpoint_ids, method ORDER BY created_at DESC) AS k
            FROM evaluations WHERE prompt_set = ? AND (details->>'stage') = 'evaluation'
              AND (? IS NULL OR prompt_set_version = ?) AND (? IS NULL OR checkpoint_ids[1] = ?)) WHERE k = 1
        """, [prompt_set, version, version, policy, policy])


def latest_accuracies(store: LineageStore, prompt_set: str, checkpoint_id: str,
                      methods: Sequence[str]) -> dict[str, float]:
    """method -> the latest accuracy recorded for `checkpoint_id` alone on `prompt_set`."""
    return {r["method"]: r["accuracy"] for r in store.records("""
        SELECT method, arg_max(accuracy, created_at) AS accuracy FROM evaluations
        WHERE prompt_set = ? AND checkpoint_ids = [?] AND method IN (SELECT unnest(?)) GROUP BY 1""",
                                                               [prompt_set, checkpoint_id, list(methods)])}
