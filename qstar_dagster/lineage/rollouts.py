"""Readers of the `trees` and `nodes` tables: which rollouts a prompt set has, their figures,
their stored rows (search rebuilds `Tree`s from them) and their invariants."""

from __future__ import annotations

from typing import Any

from qstar_dagster.lineage.store import LineageStore


def tree_ids(store: LineageStore, rollout_id: str) -> set[str]:
    """The trees of the rollout already in the store (the batches a resumed run skips)."""
    return {r["tree_id"] for r in store.records("SELECT tree_id FROM trees WHERE rollout_id = ?", [rollout_id])}


def rollout_policy(store: LineageStore, rollout_id: str) -> tuple[str | None, int]:
    """(the policy checkpoint that sampled the rollout, its number of trees); (None, 0) when
    the rollout is not in the store."""
    [row] = store.records("SELECT any_value(policy_checkpoint) AS policy, count(*) AS trees FROM trees "
                          "WHERE rollout_id = ?", [rollout_id])
    return row["policy"], row["trees"]


def tree_records(store: LineageStore, rollout_id: str) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Per tree of the rollout (by tree id): its row with the problem and the sampling
    policy's config, and its node rows in the order they were made."""
    meta = store.records("""
        SELECT t.tree_id, t.spec, t.policy_checkpoint, p.problem, p.reference_answer, p.reference_solution, p.domain,
               c.config AS policy_config
        FROM trees t JOIN prompt_texts p USING (prompt_id) LEFT JOIN checkpoints c ON c.checkpoint_id = t.policy_checkpoint
        WHERE t.rollout_id = ? ORDER BY t.tree_id""", [rollout_id])
    rows: dict[str, list[dict]] = {}
    for r in store.records("""
            SELECT n.* FROM nodes n JOIN trees t USING (tree_id) WHERE t.rollout_id = ?
            ORDER BY n.tree_id, n.depth, n.node_id""", [rollout_id]):
        rows.setdefault(r["tree_id"], []).append(r)
    return [(m, rows.get(m["tree_id"], [])) for m in meta]


def rollout_summary(store: LineageStore, rollout_id: str) -> dict:
    """Figures of a rollout as recorded (whichever runs wrote its batches)."""
    [row] = store.records("""
        SELECT count(*) AS trees, coalesce(sum(n_nodes), 0) AS nodes,
               coalesce(sum(generated_tokens), 0) AS generated_tokens, coalesce(sum(value_tokens), 0) AS value_tokens,
               coalesce(sum(seconds), 0) AS seconds,
               avg(CASE WHEN selected_correct THEN 1.0 ELSE 0.0 END) AS selected_accuracy,
               avg(CASE WHEN any_correct THEN 1.0 ELSE 0.0 END) AS pass_at_k
        FROM trees WHERE rollout_id = ?""", [rollout_id])
    tokens = row["generated_tokens"] + row["value_tokens"]
    row["tokens_per_second"] = tokens / row["seconds"] if row["seconds"] else 0.0
    return row


def tree_shape(store: LineageStore, rollout_id: str) -> dict[str, list[tuple[float, float]]]:
    """Series for the rollout's plot: nodes per depth, how many nodes have b children, and
    the share of correct terminal nodes per depth."""
    per_depth = store.query("""
        SELECT n.depth, count(*), count(*) FILTER (WHERE n.is_terminal),
               avg(CASE WHEN n.is_correct THEN 1.0 ELSE 0.0 END) FILTER (WHERE n.is_terminal)
        FROM nodes n JOIN trees t USING (tree_id) WHERE t.rollout_id = ? GROUP BY 1 ORDER BY 1""", [rollout_id])[1]
    branching = store.query("""
        WITH kids AS (
            SELECT p.node_id, count(c.node_id) AS b FROM nodes p JOIN trees t USING (tree_id)
            LEFT JOIN nodes c ON c.parent_id = p.node_id
            WHERE t.rollout_id = ? AND NOT p.is_terminal GROUP BY 1)
        SELECT b, count(*) FROM kids GROUP BY 1 ORDER BY 1""", [rollout_id])[1]
    return {
        "nodes": [(d, n) for d, n, _, _ in per_depth],
        "terminals": [(d, t) for d, _, t, _ in per_depth if t],
        "correct_share": [(d, c) for d, _, t, c in per_depth if t],
        "branching": [(b, n) for b, n in branching],
    }


def step_counts(store: LineageStore, rollout_id: str) -> dict[str, int]:
    """steps: the rollout's step nodes; paths: its root-to-leaf paths (the unit a judge rates)."""
    [row] = store.records("""SELECT count(*) AS steps,
                                    count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM nodes c
                                                                       WHERE c.parent_id = n.node_id)) AS paths
                             FROM nodes n JOIN trees t USING (tree_id)
                             WHERE t.rollout_id = ? AND n.parent_id IS NOT NULL""", [rollout_id])
    return row


def tree_violations(store: LineageStore, rollout_id: str) -> dict[str, int]:
    """Tree invariants over the stored rows: each count should be 0."""
    [row] = store.records("""
        WITH n AS (SELECT n.* FROM nodes n JOIN trees t USING (tree_id) WHERE t.rollout_id = ?)
        SELECT
          count(*) FILTER (WHERE c.parent_id IS NOT NULL AND p.node_id IS NULL) AS missing_parent,
          count(*) FILTER (WHERE p.node_id IS NOT NULL AND c.depth <> p.depth + 1) AS bad_depth,
          count(*) FILTER (WHERE p.node_id IS NOT NULL AND p.is_terminal) AS child_of_terminal,
          count(*) FILTER (WHERE c.is_terminal AND c.is_correct IS NULL) AS ungraded_terminal,
          count(*) FILTER (WHERE c.parent_id IS NULL AND c.depth <> 0) AS bad_root
        FROM n c LEFT JOIN nodes p ON p.node_id = c.parent_id""", [rollout_id])
    return row


def resolve_rollout(store: LineageStore, prompt_set: str, rollout_id: str | None = None,
                    policy: str | None = None) -> str:
    """The rollout named, checked to be of `prompt_set`; else the prompt set's latest one
    (sampled by `policy`, when given)."""
    rows = store.records("""SELECT rollout_id, max(created_at) AS last_at FROM trees
                            WHERE prompt_set = ? AND (? IS NULL OR policy_checkpoint = ?)
                            GROUP BY 1 ORDER BY last_at DESC""", [prompt_set, policy, policy])
    if rollout_id is None:
        if not rows:
            raise LookupError(f"prompt set {prompt_set!r} has no rollouts{f' by {policy}' if policy else ''} in "
                              f"{store.path}; materialize tot_rollouts for partition {prompt_set!r} first")
        return rows[0]["rollout_id"]
    if rollout_id not in {r["rollout_id"] for r in rows}:
        raise LookupError(f"rollout {rollout_id!r} is not a rollout of prompt set {prompt_set!r}; list them with "
                          f"qstar sql \"select distinct rollout_id from trees where prompt_set = '{prompt_set}'\"")
    return rollout_id


def search_accuracy(store: LineageStore, prompt_set: str, policy: str, value_function: str,
                    search: str = "beam") -> dict | None:
    """The latest complete `search` rollout of `prompt_set` by `policy` valued by `value_function`
    ('likelihood', 'prm:<checkpoint>'): its selected-path accuracy and nodes per tree (the
    budget), or None when there is none."""
    rows = store.records("""
        SELECT rollout_id, max(created_at) AS last_at, count(*) AS trees, avg(n_nodes) AS nodes_per_tree,
               avg(CASE WHEN selected_correct THEN 1.0 ELSE 0.0 END) AS selected_accuracy
        FROM trees WHERE prompt_set = ? AND policy_checkpoint = ? AND value_function = ? AND search = ?
        GROUP BY 1 ORDER BY last_at DESC LIMIT 1""", [prompt_set, policy, value_function, search])
    return {k: v for k, v in rows[0].items() if k != "last_at"} if rows else None


def held_out_rollout(store: LineageStore, prompt_set: str, policy: str | None) -> str | None:
    """The rollout to measure a verifier on: the held-out set's latest rollout by `policy`,
    else by any policy, else None."""
    for by in (policy, None):
        try:
            return resolve_rollout(store, prompt_set, policy=by)
        except LookupError:
            continue
    return None


def write_whole_rollout(store: LineageStore, rollout_id: str, node_rows: list[dict], label_rows: list[dict],
                        tree_rows: list[dict]) -> bool:
    """Write a rollout made at once (an imported file) in one transaction; False, and nothing
    written, when the rollout is already there: its id is its content, so a re-run is a no-op."""
    with store.transaction() as con:
        if con.execute("SELECT count(*) FROM trees WHERE rollout_id = ?", [rollout_id]).fetchone()[0]:
            return False
        store.insert(con, "nodes", node_rows)
        store.insert(con, "step_labels", label_rows)
        store.insert(con, "trees", tree_rows)  # trees last, as rollouts write them
    return True


def imported_rollouts(store: LineageStore, prompt_set: str) -> list[dict]:
    """The prompt set's imported rollouts (trees.search 'import:<format>'), newest first:
    rollout_id, format."""
    return store.records("""SELECT rollout_id, any_value(spec->>'format') AS format FROM trees
                            WHERE prompt_set = ? AND search LIKE 'import:%' GROUP BY 1
                            ORDER BY max(created_at) DESC""", [prompt_set])
