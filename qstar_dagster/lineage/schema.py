"""The lineage store's schema: numbered migrations for tables (data), views recreated on
every open (code). A store file records the migrations applied to it in `schema_version`;
opening an older file applies the missing ones in order, each in its own transaction."""

from __future__ import annotations

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "runs and prompt sets",
        """
        CREATE TABLE runs (
            run_id VARCHAR NOT NULL,           -- Dagster run id (or a CLI run id)
            asset_key VARCHAR NOT NULL,
            partition VARCHAR NOT NULL DEFAULT '',
            config JSON,
            code_version VARCHAR,
            started_at TIMESTAMP NOT NULL,
            ended_at TIMESTAMP,
            status VARCHAR NOT NULL DEFAULT 'started',   -- started | success | failure
            PRIMARY KEY (run_id, asset_key, partition)
        );
        -- Content-addressed: one row per distinct problem, whichever sets contain it.
        CREATE TABLE prompt_texts (
            prompt_id VARCHAR PRIMARY KEY,
            domain VARCHAR NOT NULL,
            problem VARCHAR NOT NULL,
            reference_answer VARCHAR NOT NULL,
            reference_solution VARCHAR,
            meta JSON,
            created_run VARCHAR
        );
        -- One row per version (content hash) of a prompt set; old versions stay for lineage.
        CREATE TABLE prompt_sets (
            prompt_set VARCHAR NOT NULL,
            version VARCHAR NOT NULL,
            source VARCHAR NOT NULL,            -- builtin:<set name>, or the path of the file
            domain VARCHAR NOT NULL,
            n INTEGER NOT NULL,
            n_duplicates INTEGER NOT NULL,      -- rows of the source that repeat an earlier row
            created_run VARCHAR,
            created_at TIMESTAMP NOT NULL,
            PRIMARY KEY (prompt_set, version)
        );
        CREATE TABLE prompt_set_members (
            prompt_set VARCHAR NOT NULL,
            version VARCHAR NOT NULL,
            idx INTEGER NOT NULL,               -- position in the source
            prompt_id VARCHAR NOT NULL,
            PRIMARY KEY (prompt_set, version, prompt_id)
        );
        -- Which version of each set is current.
        CREATE TABLE prompt_set_heads (
            prompt_set VARCHAR PRIMARY KEY,
            version VARCHAR NOT NULL
        );
        """,
    ),
    (
        2,
        "lifecycle artifacts: checkpoints, tree nodes, step labels, datasets, evaluations",
        """
        CREATE TABLE checkpoints (
            checkpoint_id VARCHAR PRIMARY KEY,
            kind VARCHAR NOT NULL,              -- policy | prm | judge
            base VARCHAR,                       -- checkpoint id or model name it started from
            path VARCHAR,
            sha256 VARCHAR,
            trained_on_dataset VARCHAR,
            config JSON,
            metrics JSON,
            created_run VARCHAR,
            created_at TIMESTAMP NOT NULL
        );
        CREATE TABLE nodes (
            node_id VARCHAR PRIMARY KEY,        -- one reasoning step; the root has parent_id NULL
            tree_id VARCHAR NOT NULL,
            prompt_id VARCHAR NOT NULL,
            parent_id VARCHAR,
            depth INTEGER NOT NULL,
            text VARCHAR NOT NULL,
            n_tokens INTEGER,
            logprob DOUBLE,
            is_terminal BOOLEAN NOT NULL DEFAULT FALSE,
            answer VARCHAR,
            is_correct BOOLEAN,
            policy_checkpoint VARCHAR,
            search VARCHAR,
            stats JSON,
            created_run VARCHAR
        );
        CREATE TABLE step_labels (
            node_id VARCHAR NOT NULL,
            labeler VARCHAR NOT NULL,           -- mc | binary_search | judge | oracle | consensus ...
            kind VARCHAR NOT NULL,              -- hard | soft | ternary
            value DOUBLE,                       -- NULL when the labeler could not say (unparsed judge)
            n_rollouts INTEGER,
            n_correct INTEGER,
            cost_tokens BIGINT,
            raw VARCHAR,
            labeler_checkpoint VARCHAR,
            created_run VARCHAR,
            PRIMARY KEY (node_id, labeler, kind)
        );
        CREATE TABLE datasets (
            dataset_id VARCHAR PRIMARY KEY,
            kind VARCHAR NOT NULL,              -- rft | prm | pairs | ...
            spec JSON,
            n_rows INTEGER NOT NULL,
            path VARCHAR,
            sha256 VARCHAR,
            created_run VARCHAR,
            created_at TIMESTAMP NOT NULL
        );
        CREATE TABLE dataset_members (
            dataset_id VARCHAR NOT NULL,
            row_idx INTEGER NOT NULL,
            node_id VARCHAR NOT NULL,
            role VARCHAR NOT NULL DEFAULT 'step',   -- step | chosen | rejected | ...
            PRIMARY KEY (dataset_id, row_idx, node_id, role)
        );
        CREATE TABLE evaluations (
            eval_id VARCHAR PRIMARY KEY,
            checkpoint_ids VARCHAR[] NOT NULL,
            prompt_set VARCHAR NOT NULL,
            method VARCHAR NOT NULL,
            n INTEGER,
            accuracy DOUBLE,
            details JSON,
            created_run VARCHAR,
            created_at TIMESTAMP NOT NULL
        );
        """,
    ),
    (
        3,
        "checkpoints trained on a prompt set; evaluations pinned to a prompt-set version",
        """
        -- The built-in base policy learns from a prompt set's reference solutions ('set@version').
        ALTER TABLE checkpoints ADD COLUMN trained_on_prompt_set VARCHAR;
        ALTER TABLE evaluations ADD COLUMN prompt_set_version VARCHAR;
        """,
    ),
    (
        4,
        "search trees: one row per tree of a rollout",
        """
        -- A rollout is one (prompt set version, policy, search config) materialization; its
        -- trees are written a batch per transaction, so a tree row means the tree is whole.
        CREATE TABLE trees (
            tree_id VARCHAR PRIMARY KEY,
            rollout_id VARCHAR NOT NULL,
            prompt_id VARCHAR NOT NULL,
            prompt_set VARCHAR NOT NULL,
            prompt_set_version VARCHAR NOT NULL,
            policy_checkpoint VARCHAR,
            search VARCHAR NOT NULL,            -- best_of_n | beam | mcts
            value_function VARCHAR NOT NULL,    -- none | likelihood | mc | prm:<checkpoint>
            spec JSON,
            n_nodes INTEGER NOT NULL,
            generated_tokens BIGINT NOT NULL,   -- tokens of the tree's steps
            value_tokens BIGINT NOT NULL,       -- tokens the value function generated (Monte Carlo)
            seconds DOUBLE,                     -- its batch's search time, shared among the batch's trees
            selected_node VARCHAR,              -- the leaf the search answers with
            selected_correct BOOLEAN,
            any_correct BOOLEAN NOT NULL,       -- some terminal node is correct (pass@k)
            created_run VARCHAR,
            created_at TIMESTAMP NOT NULL
        );
        CREATE INDEX trees_rollout ON trees (rollout_id);
        CREATE INDEX nodes_tree ON nodes (tree_id);
        """,
    ),
    (
        5,
        "label agreement: each labeler against the oracle and against each other, per rollout",
        """
        CREATE TABLE label_agreements (
            rollout_id VARCHAR NOT NULL,
            labeler VARCHAR NOT NULL,
            reference VARCHAR NOT NULL,         -- oracle, or another labeler
            n_steps INTEGER NOT NULL,           -- steps both label (against the oracle: up to the first error)
            accuracy DOUBLE,
            negative_precision DOUBLE,          -- of the steps it calls wrong, the share that are
            negative_recall DOUBLE,             -- of the wrong steps, the share it calls wrong
            kappa DOUBLE,                       -- Cohen's kappa
            confusion JSON,                     -- [[ref -, ref +] rows] x [labeler -, labeler +]
            n_solutions INTEGER NOT NULL,       -- finished solutions with a first error both decide
            first_error_accuracy_erroneous DOUBLE,
            first_error_accuracy_correct DOUBLE,
            first_error_f1 DOUBLE,              -- ProcessBench's F1 of the two accuracies above
            labeled_steps INTEGER,              -- steps the labeler labels on the rollout
            cost_tokens BIGINT,                 -- tokens it generated to label them
            created_run VARCHAR,
            created_at TIMESTAMP NOT NULL,
            PRIMARY KEY (rollout_id, labeler, reference)
        );
        """,
    ),
    (
        6,
        "evaluations: every row says which stage measured it (details.stage)",
        """
        -- the sweep's rows were the ones with an N in their details
        UPDATE evaluations SET details = json_merge_patch(details, json_object('stage',
            CASE WHEN (details->>'N') IS NOT NULL THEN 'evaluation' ELSE 'base_policy' END))
        WHERE (details->>'stage') IS NULL;
        """,
    ),
    (
        7,
        "runs: the process that ran each, so a run that died can be marked interrupted",
        """
        -- status: started | success | failure | interrupted (its process died: marked by the
        -- next run of the same asset and partition on the same host)
        ALTER TABLE runs ADD COLUMN host VARCHAR;
        ALTER TABLE runs ADD COLUMN pid INTEGER;
        """,
    ),
]

LATEST_VERSION = MIGRATIONS[-1][0]

# A shared store's migrations run through DuckDB's postgres extension, which maps the DDL's
# types; where a migration's DuckDB SQL cannot run over the extension (an UPDATE of a JSON
# column), this is PostgreSQL's own text of it.
POSTGRES_MIGRATIONS: dict[int, str] = {
    6: """
        UPDATE evaluations SET details = (details::jsonb || jsonb_build_object('stage',
            CASE WHEN details->>'N' IS NOT NULL THEN 'evaluation' ELSE 'base_policy' END))::json
        WHERE details->>'stage' IS NULL
    """,
}

# Views are code, not data: they are dropped and recreated whenever a store is opened
# read-write, so changing one needs no migration.
VIEWS: dict[str, str] = {
    # The current version of every prompt set, one row per member prompt.
    "prompts": """
        SELECT m.prompt_set, m.version, m.idx, t.prompt_id, t.domain, t.problem,
               t.reference_answer, t.reference_solution, t.meta, s.created_run
        FROM prompt_set_members m
        JOIN prompt_set_heads h USING (prompt_set, version)
        JOIN prompt_sets s USING (prompt_set, version)
        JOIN prompt_texts t USING (prompt_id)
    """,
    # Every artifact -> an artifact (or run) it was made from. Ids: a prompt set version is
    # 'set@version'; a step label is 'node_id/labeler/kind'; the rest are their own ids.
    "lineage_edges": """
        SELECT 'prompt_set' AS child_kind, prompt_set || '@' || version AS child_id,
               'source' AS parent_kind, source AS parent_id, 'loaded_from' AS relation FROM prompt_sets
        UNION ALL
        SELECT 'prompt', prompt_id, 'prompt_set', prompt_set || '@' || version, 'member_of'
        FROM prompt_set_members
        UNION ALL
        SELECT 'node', node_id, 'node', parent_id, 'child_of' FROM nodes WHERE parent_id IS NOT NULL
        UNION ALL
        -- The root stands for its tree; the tree says which prompt and which policy.
        SELECT 'node', node_id, 'tree', tree_id, 'root_of' FROM nodes WHERE parent_id IS NULL
        UNION ALL
        SELECT 'tree', tree_id, 'prompt', prompt_id, 'searches' FROM trees
        UNION ALL
        SELECT 'tree', tree_id, 'checkpoint', policy_checkpoint, 'sampled_by'
        FROM trees WHERE policy_checkpoint IS NOT NULL
        UNION ALL
        -- an imported file's trees (PRM800K, Math-Shepherd, ProcessBench) come from the file
        SELECT 'tree', tree_id, 'source', (spec->>'source'), 'imported_from' FROM trees WHERE search LIKE 'import:%'
        UNION ALL
        SELECT 'step_label', node_id || '/' || labeler || '/' || kind, 'node', node_id, 'labels' FROM step_labels
        UNION ALL
        SELECT 'step_label', node_id || '/' || labeler || '/' || kind, 'checkpoint', labeler_checkpoint, 'labeled_by'
        FROM step_labels WHERE labeler_checkpoint IS NOT NULL
        UNION ALL
        SELECT DISTINCT 'dataset', dataset_id, 'node', node_id, 'contains' FROM dataset_members
        UNION ALL
        -- Datasets made from one labeler's labels (prm, step_pairs) point at the labels they read.
        SELECT DISTINCT 'dataset', m.dataset_id, 'step_label', l.node_id || '/' || l.labeler || '/' || l.kind, 'labeled_by'
        FROM dataset_members m JOIN datasets d USING (dataset_id)
        JOIN step_labels l ON l.node_id = m.node_id AND l.labeler = (d.spec->>'labeler') AND l.kind = 'hard'
        WHERE d.kind IN ('prm', 'step_pairs')
        UNION ALL
        SELECT 'checkpoint', checkpoint_id, 'dataset', trained_on_dataset, 'trained_on'
        FROM checkpoints WHERE trained_on_dataset IS NOT NULL
        UNION ALL
        SELECT 'checkpoint', checkpoint_id, 'prompt_set', trained_on_prompt_set, 'trained_on'
        FROM checkpoints WHERE trained_on_prompt_set IS NOT NULL
        UNION ALL
        SELECT 'checkpoint', c.checkpoint_id, 'checkpoint', c.base, 'fine_tuned_from'
        FROM checkpoints c JOIN checkpoints b ON b.checkpoint_id = c.base
        UNION ALL
        -- a policy trained by RL points at the PRM whose step scores were its rewards
        SELECT 'checkpoint', checkpoint_id, 'checkpoint', (config->>'reward_checkpoint'), 'rewarded_by'
        FROM checkpoints WHERE (config->>'reward_checkpoint') IS NOT NULL
        UNION ALL
        SELECT 'evaluation', eval_id, 'checkpoint', unnest(checkpoint_ids), 'evaluates' FROM evaluations
        UNION ALL
        SELECT 'evaluation', e.eval_id, 'prompt_set', e.prompt_set || '@' || coalesce(e.prompt_set_version, h.version),
               'evaluated_on'
        FROM evaluations e LEFT JOIN prompt_set_heads h USING (prompt_set)
        UNION ALL
        SELECT kind, id, 'run', created_run, 'created_by' FROM (
            SELECT 'prompt_set' AS kind, prompt_set || '@' || version AS id, created_run FROM prompt_sets
            UNION ALL SELECT 'tree', tree_id, created_run FROM trees
            UNION ALL SELECT 'checkpoint', checkpoint_id, created_run FROM checkpoints
            UNION ALL SELECT 'dataset', dataset_id, created_run FROM datasets
            UNION ALL SELECT 'evaluation', eval_id, created_run FROM evaluations
        ) WHERE created_run IS NOT NULL
    """,
    # Every terminal node with its path from the root: the solution a rollout wrote, step by
    # step (steps[1] is the first step; the root holds no text).
    "rollout_paths": """
        -- (the recursive steps read a materialized copy: DuckDB's postgres extension
        -- scans a table once per query, so a shared store's walk stopped at the second step)
        WITH RECURSIVE steps AS MATERIALIZED (SELECT node_id, parent_id, text FROM nodes),
        walk(leaf_id, node_id, parent_id, steps, node_ids) AS (
            SELECT node_id, node_id, parent_id, [text], [node_id] FROM nodes WHERE is_terminal
            UNION ALL
            SELECT w.leaf_id, n.node_id, n.parent_id, list_prepend(n.text, w.steps),
                   list_prepend(n.node_id, w.node_ids)
            FROM walk w JOIN steps n ON n.node_id = w.parent_id
        )
        SELECT t.rollout_id, t.prompt_set, l.tree_id, l.prompt_id, w.leaf_id AS node_id,
               w.node_ids[2:] AS step_node_ids, w.steps[2:] AS steps,
               l.depth, l.answer, l.is_correct, coalesce(t.selected_node = w.leaf_id, FALSE) AS selected,
               l.search, l.policy_checkpoint
        FROM walk w JOIN nodes l ON l.node_id = w.leaf_id JOIN trees t ON t.tree_id = l.tree_id
        WHERE w.parent_id IS NULL
    """,
    # Each labeler against the oracle (and each other) on the latest agreement of every rollout.
    "label_agreement": """
        SELECT t.prompt_set, a.rollout_id, a.labeler, a.reference, a.n_steps,
               round(a.accuracy, 3) AS accuracy, round(a.negative_precision, 3) AS negative_precision,
               round(a.negative_recall, 3) AS negative_recall, round(a.kappa, 3) AS kappa,
               a.n_solutions, round(a.first_error_f1, 3) AS first_error_f1, a.labeled_steps,
               round(a.cost_tokens / nullif(a.labeled_steps, 0), 1) AS tokens_per_step, a.confusion
        FROM label_agreements a
        JOIN (SELECT DISTINCT rollout_id, prompt_set FROM trees) t USING (rollout_id)
        ORDER BY t.prompt_set, a.rollout_id, a.reference <> 'oracle', a.reference, a.labeler
    """,
    # Expert-iteration rounds, read off the checkpoint chain: the base policy is round 0; a
    # checkpoint trained from a round-k policy is round k+1; a rollout sampled by a round-k
    # policy (and what was made from it: labels, datasets) feeds round k+1.
    "rounds": """
        WITH RECURSIVE ck AS MATERIALIZED (SELECT checkpoint_id, kind, base, (config->>'trainer') AS trainer
                                           FROM checkpoints),
        r(checkpoint_id, kind, round) AS (
            -- a base policy is a policy made by no trainer (step-PPO's policy has no dataset
            -- either: it learns from a prompt set, and is no base)
            SELECT checkpoint_id, kind, 0 FROM ck WHERE kind = 'policy' AND trainer IS NULL
            UNION ALL
            SELECT c.checkpoint_id, c.kind, r.round + 1 FROM ck c JOIN r ON c.base = r.checkpoint_id
            WHERE r.kind = 'policy' AND c.kind IN ('policy', 'prm')
        ),
        rollouts AS (
            SELECT DISTINCT t.rollout_id, t.prompt_set, r.round + 1 AS round
            FROM trees t JOIN r ON r.checkpoint_id = t.policy_checkpoint
        )
        SELECT kind, checkpoint_id AS id, round, NULL AS prompt_set FROM r
        UNION ALL SELECT 'rollout', rollout_id, round, prompt_set FROM rollouts
        UNION ALL SELECT 'dataset:' || d.kind, d.dataset_id, o.round, o.prompt_set
        FROM datasets d JOIN rollouts o ON o.rollout_id = (d.spec->>'rollout_id')
    """,
    "label_stats": """
        SELECT labeler, kind,
               count(*) AS n_labels,
               count(value) AS n_parsed,
               avg(value) AS mean_value,
               avg(CASE WHEN value IS NULL THEN NULL WHEN value > 0.5 THEN 1.0 ELSE 0.0 END) AS positive_rate,
               avg(CASE WHEN value IS NULL THEN 1.0 ELSE 0.0 END) AS unparsed_rate,
               sum(cost_tokens) AS cost_tokens,
               sum(cost_tokens) / count(*) AS tokens_per_label
        FROM step_labels GROUP BY labeler, kind
    """,
}
