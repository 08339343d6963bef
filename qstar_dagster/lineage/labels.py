"""Readers and writers of `step_labels` and `label_agreements`, per rollout.

A label row is (node, labeler, kind): `hard` (the step is good: value > 0.5), `soft` (a
Monte Carlo share), `prefix` (the oracle: the path up to here is right), `unparsed` (a judge
answer that named no verdict)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qstar_dagster.lineage.store import LineageStore

# the label rows of one rollout's nodes (one parameter: the rollout id)
_OF_ROLLOUT = "node_id IN (SELECT node_id FROM nodes JOIN trees USING (tree_id) WHERE rollout_id = ?)"


def as_positive(values: dict[str, float]) -> dict[str, bool]:
    """node id -> good step, from hard-label values (the store's convention: value > 0.5)."""
    return {n: v > 0.5 for n, v in values.items()}


def label_values(store: LineageStore, rollout_id: str, kinds: Sequence[str],
                 labeler: str | None = None) -> dict[tuple[str, str], dict[str, float]]:
    """(labeler, kind) -> node id -> value, for the rollout's rows of `kinds` that have a
    value (of one labeler, when given)."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    for r in store.records(f"""SELECT labeler, kind, node_id, value FROM step_labels
                               WHERE kind IN (SELECT unnest(?)) AND value IS NOT NULL
                                 AND (? IS NULL OR labeler = ?) AND {_OF_ROLLOUT}""",
                           [list(kinds), labeler, labeler, rollout_id]):
        out.setdefault((r["labeler"], r["kind"]), {})[r["node_id"]] = r["value"]
    return out


def labeler_settings(store: LineageStore, rollout_id: str, labeler: str) -> list[dict]:
    """The distinct (n_rollouts, labeler_checkpoint) a labeler's rows on this rollout carry."""
    # Finished steps are their own single rollout whatever N is: they say nothing about N.
    return store.records(f"""SELECT DISTINCT l.n_rollouts, l.labeler_checkpoint FROM step_labels l
                             JOIN nodes n USING (node_id)
                             WHERE l.labeler = ? AND NOT n.is_terminal AND l.{_OF_ROLLOUT}""",
                         [labeler, rollout_id])


def labeled_tree_ids(store: LineageStore, rollout_id: str, labeler: str) -> set[str]:
    """The rollout's trees with any label of `labeler` (their batch committed whole)."""
    return {r["tree_id"] for r in store.records("""
        SELECT DISTINCT n.tree_id FROM step_labels l JOIN nodes n USING (node_id) JOIN trees t USING (tree_id)
        WHERE t.rollout_id = ? AND l.labeler = ?""", [rollout_id, labeler])}


def clear_labels(store: LineageStore, rollout_id: str, labeler: str) -> int:
    with store.transaction() as con:
        return con.execute(f"DELETE FROM step_labels WHERE labeler = ? AND {_OF_ROLLOUT}",
                           [labeler, rollout_id]).fetchone()[0]


def write_consensus(store: LineageStore, rollout_id: str, labeler: str, first: str, second: str,
                    run_id: str | None) -> int:
    """Replace `labeler`'s rows on the rollout with `first`'s hard labels where `second` gives
    the same one; returns how many were written."""
    with store.transaction() as con:
        con.execute(f"DELETE FROM step_labels WHERE labeler = ? AND {_OF_ROLLOUT}", [labeler, rollout_id])
        return con.execute(f"""
            INSERT INTO step_labels (node_id, labeler, kind, value, n_rollouts, n_correct, cost_tokens, raw,
                                     labeler_checkpoint, created_run)
            SELECT a.node_id, ?, 'hard', a.value, a.n_rollouts, a.n_correct, 0, ?, NULL, ?
            FROM step_labels a JOIN step_labels b ON b.node_id = a.node_id AND b.kind = 'hard' AND b.labeler = ?
            WHERE a.labeler = ? AND a.kind = 'hard' AND a.value = b.value AND a.{_OF_ROLLOUT}""",
                           [labeler, f"{first}+{second}", run_id, second, first, rollout_id]).fetchone()[0]


def label_costs(store: LineageStore, rollout_id: str) -> dict[str, dict[str, Any]]:
    """labeler -> tokens (sampled to make its labels) and steps (distinct nodes labeled)."""
    return {r["labeler"]: r for r in store.records(f"""
        SELECT labeler, sum(cost_tokens) AS tokens, count(DISTINCT node_id) AS steps FROM step_labels
        WHERE {_OF_ROLLOUT} GROUP BY 1""", [rollout_id])}


def label_stats(store: LineageStore, rollout_id: str, labeler: str) -> dict:
    """labeled_steps, positive_rate (of hard labels), unparsed, cost_tokens."""
    [row] = store.records(f"""
        SELECT count(DISTINCT node_id) AS labeled_steps,
               avg(CASE WHEN value > 0.5 THEN 1.0 ELSE 0.0 END) FILTER (WHERE kind = 'hard') AS positive_rate,
               count(*) FILTER (WHERE kind = 'unparsed') AS unparsed,
               coalesce(sum(cost_tokens), 0) AS cost_tokens
        FROM step_labels WHERE labeler = ? AND {_OF_ROLLOUT}""", [labeler, rollout_id])
    return row


def positive_rate_by_depth(store: LineageStore, rollout_id: str, labeler: str) -> list[tuple[float, float]]:
    return [tuple(r) for r in store.query(f"""
        SELECT n.depth, avg(CASE WHEN l.value > 0.5 THEN 1.0 ELSE 0.0 END) FROM step_labels l JOIN nodes n USING (node_id)
        WHERE l.labeler = ? AND l.kind = 'hard' AND l.{_OF_ROLLOUT} GROUP BY 1 ORDER BY 1""",
        [labeler, rollout_id])[1]]


def value_histogram(store: LineageStore, rollout_id: str, labeler: str, kind: str,
                    bins: int) -> list[tuple[float, int]]:
    """(bin start, rows) of a labeler's values of `kind` on the rollout, `bins` equal bins of [0, 1]."""
    return [tuple(r) for r in store.query(f"""SELECT floor(value * ?) / ? AS bin, count(*) FROM step_labels
                                              WHERE labeler = ? AND kind = ? AND {_OF_ROLLOUT}
                                              GROUP BY 1 ORDER BY 1""", [bins, bins, labeler, kind, rollout_id])[1]]


def replace_agreements(store: LineageStore, rollout_id: str, rows: list[dict]) -> None:
    """The rollout's agreement rows are recomputed whole: the old ones go in the same commit."""
    with store.transaction() as con:
        con.execute("DELETE FROM label_agreements WHERE rollout_id = ?", [rollout_id])
        store.insert(con, "label_agreements", rows)


def latest_agreements(store: LineageStore, prompt_set: str, reference: str) -> list[dict]:
    """Every labeler's agreement with `reference` on the prompt set's most recently compared
    rollout (labeler, accuracy, first_error_f1, tokens_per_step)."""
    rollout = store.records("""SELECT a.rollout_id FROM label_agreements a JOIN trees t USING (rollout_id)
                               WHERE t.prompt_set = ? GROUP BY 1 ORDER BY max(a.created_at) DESC LIMIT 1""",
                            [prompt_set])
    if not rollout:
        return []
    return store.records("""SELECT labeler, accuracy, first_error_f1, tokens_per_step FROM label_agreement
                            WHERE reference = ? AND rollout_id = ? ORDER BY labeler""",
                         [reference, rollout[0]["rollout_id"]])
