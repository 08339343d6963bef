"""Labeling a stored rollout: the labelers of this package run over the rollout's trees and
write `step_labels` rows, a batch of trees per transaction.

Resume: a tree with any label of a labeler is done for that labeler (its batch committed
whole), so a killed run picks up at the first batch it had not written, and a re-run
writes nothing and loads no model. Labels made with other settings (another N, another
judge checkpoint) are never mixed in silently: that is an error unless `replace`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from qstar_dagster.generation.base import Generator
from qstar_dagster.labeling import binary_search, judge, montecarlo, oracle
from qstar_dagster.labeling.agreement import agreement
from qstar_dagster.lineage import artifacts
from qstar_dagster.lineage import labels as labels_db
from qstar_dagster.lineage.batches import write_batches
from qstar_dagster.lineage.rollouts import rollout_policy, tree_ids
from qstar_dagster.lineage.store import LineageStore, utcnow
from qstar_dagster.search.estimate import EstimatorSpec, PrefixEstimator
from qstar_dagster.search.rollouts import load_trees
from qstar_dagster.search.tree import Tree
from qstar_dagster.tasks.domains import domain
from qstar_dagster.tasks.problem import policy_prompt
from qstar_dagster.tasks.process_files import LABELED_FORMATS

log = logging.getLogger(__name__)

MC_METHODS = (montecarlo.LABELER, binary_search.LABELER)
CONSENSUS = "consensus"
# Labels other labelers are measured against, where a rollout has them: the domain's oracle,
# and the human (or published) labels of an imported file.
REFERENCE_LABELERS = (oracle.LABELER, *LABELED_FORMATS)


@dataclass
class LabelResult:
    labeler: str
    n_batches: int = 0
    n_batches_run: int = 0
    n_rows_written: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def _guard(store: LineageStore, rollout_id: str, labeler: str, want: dict, replace: bool) -> None:
    """Refuse to add labels made with other settings to a labeler's rows unless `replace`."""
    have = labels_db.labeler_settings(store, rollout_id, labeler)
    other = [h for h in have if any(h[k] != v for k, v in want.items())]
    if other and not replace:
        raise ValueError(
            f"rollout {rollout_id} already has {labeler!r} labels made with {other[0]}, not {want}. Set "
            f"replace: true to relabel, or give these labels another labeler name to keep both")
    if replace and have:
        log.info("%s: replacing %d labels on rollout %s", labeler, labels_db.clear_labels(store, rollout_id, labeler),
                 rollout_id)


def _batches(trees: Sequence[Tree], size: int) -> list[list[Tree]]:
    if size < 1:
        raise ValueError(f"batch_trees must be >= 1, got {size}")
    return [list(trees[i:i + size]) for i in range(0, len(trees), size)]


def _seed(trees: Sequence[Tree], seed: int) -> int:
    """A batch's seed from its trees: a resumed run samples what an uninterrupted one would."""
    return int.from_bytes(hashlib.sha256(repr((seed, [t.tree_id for t in trees])).encode()).digest()[:4], "little")


OnBatch = Callable[[int, int], None] | None  # (batches done, batches to do): progress; tests stop runs with it


def _run_batches(store: LineageStore, rollout_id: str, labeler: str, batch_trees: int,
                 label_batch: Callable[[list[Tree]], list[dict]], progress: str, on_batch: OnBatch,
                 shard: tuple[int, int] = (0, 1)) -> LabelResult:
    """Label the batches the labeler has not written yet; `shard` (k, n): only batches i with
    i mod n == k (the batches are the same in every shard: the rollout's trees in order)."""
    trees = load_trees(store, rollout_id)
    done = labels_db.labeled_tree_ids(store, rollout_id, labeler)
    k, n = shard
    batches = [b for i, b in enumerate(_batches(trees, batch_trees)) if i % n == k]
    todo = [b for b in batches if not all(t.tree_id in done for t in b)]
    result = LabelResult(labeler, len(batches))
    started = time.monotonic()

    def work(batch: list[Tree]):
        rows = label_batch(batch)
        return {"step_labels": rows}, f"{len(rows)} labels"

    for n in write_batches(store, todo, work, f"{progress} on rollout {rollout_id}", on_batch):
        result.n_rows_written += n["step_labels"]
        result.n_batches_run += 1
    result.seconds = time.monotonic() - started
    return result


def labeling_policy(store: LineageStore, rollout_id: str, policy: str | None = None) -> str:
    """The policy that completes a rollout's steps: `policy`, else the one that sampled it."""
    sampled_by, _ = rollout_policy(store, rollout_id)
    if policy is None and sampled_by is None:
        raise ValueError(f"rollout {rollout_id} was sampled by no policy checkpoint of this store (an imported "
                         "file?); name the policy to complete its steps with (mc_labels config: policy)")
    return policy or sampled_by


def label_monte_carlo(store: LineageStore, rollout_id: str, load_generator: Callable[[], Generator],
                      spec: EstimatorSpec | None = None, methods: Sequence[str] = MC_METHODS,
                      batch_trees: int = 32, seed: int = 0, replace: bool = False,
                      run_id: str | None = None, on_batch: OnBatch = None, policy: str | None = None,
                      shard: tuple[int, int] = (0, 1)) -> list[LabelResult]:
    """Math-Shepherd labels of every step (`mc`) and/or binary-search labels of each
    solution's steps up to its first error (`binary_search`), with `policy` (default: the
    rollout's own), prompted the way it was trained. `shard` (k, n): this shard's batches only
    (run `guard_monte_carlo` with `replace` once before the shards, and the shards without)."""
    spec = spec or EstimatorSpec()
    bad = set(methods) - set(MC_METHODS)
    if bad or not methods:
        raise ValueError(f"methods must be a non-empty subset of {list(MC_METHODS)}, got {list(methods)}")
    sampled_by, _ = rollout_policy(store, rollout_id)
    policy = labeling_policy(store, rollout_id, policy)
    template = None if policy == sampled_by else artifacts.checkpoint_template(store.checkpoint(policy, "policy"))
    generator: Generator | None = None

    def gen() -> Generator:
        nonlocal generator
        generator = generator or load_generator()
        return generator

    results = []
    for method in methods:
        guard_monte_carlo(store, rollout_id, spec, [method], replace, policy)

        def batch_rows(trees: list[Tree], method=method) -> list[dict]:
            for t in trees if template is not None else ():  # another policy's prompt format
                t.prompt = policy_prompt(t.problem.problem, template)
            estimator = PrefixEstimator(gen(), spec, seed=_seed(trees, seed))
            if method == montecarlo.LABELER:
                return montecarlo.label_rows(montecarlo.label_trees(trees, estimator), run_id=run_id,
                                             checkpoint=policy)
            solutions = [(t, leaf) for t in trees for leaf in t.terminals()]
            rows = binary_search.label_rows(binary_search.first_errors(solutions, estimator), run_id)
            return [r | {"labeler_checkpoint": policy} for r in rows]

        results.append(_run_batches(store, rollout_id, method, batch_trees, batch_rows, f"{method} labels",
                                    on_batch, shard))
    return results


def guard_monte_carlo(store: LineageStore, rollout_id: str, spec: EstimatorSpec, methods: Sequence[str],
                      replace: bool, policy: str | None = None) -> None:
    """Refuse to mix labels of other settings into `methods`' labels on the rollout, or with
    `replace` clear them: once per run, before its shards label (a shard that cleared would
    drop the others' work)."""
    policy = labeling_policy(store, rollout_id, policy)
    for method in methods:
        _guard(store, rollout_id, method, {"labeler_checkpoint": policy} | (
            {"n_rollouts": spec.n} if method == montecarlo.LABELER else {}), replace)


def n_batches(store: LineageStore, rollout_id: str, batch_trees: int) -> int:
    """How many batches `_run_batches` cuts the rollout's trees into."""
    if batch_trees < 1:
        raise ValueError(f"batch_trees must be >= 1, got {batch_trees}")
    return -(-len(tree_ids(store, rollout_id)) // batch_trees)


def label_judge(store: LineageStore, rollout_id: str, load_generator: Callable[[], Generator],
                checkpoint: str | None, labeler: str = judge.LABELER, batch_trees: int = 64,
                replace: bool = False, run_id: str | None = None, on_batch: OnBatch = None) -> LabelResult:
    """PRM800K-guideline judge labels of every root-to-leaf path. `checkpoint`: the judge's
    checkpoint id or model name, recorded on every row."""
    _guard(store, rollout_id, labeler, {"labeler_checkpoint": checkpoint}, replace)
    generator: Generator | None = None

    def batch_rows(trees: list[Tree]) -> list[dict]:
        nonlocal generator
        generator = generator or load_generator()
        rows = judge.label_trees(trees, generator, checkpoint=checkpoint, run_id=run_id)
        return [r | {"labeler": labeler} for r in rows]

    return _run_batches(store, rollout_id, labeler, batch_trees, batch_rows, f"{labeler} labels", on_batch)


def label_oracle(store: LineageStore, rollout_id: str, run_id: str | None = None) -> LabelResult:
    """Step-correct (`hard`) and prefix-correct (`prefix`) labels from the domain's step
    oracle (arith, countdown); nothing for domains without one."""
    trees = [t for t in load_trees(store, rollout_id) if domain(t.problem.domain).has_oracle]
    result = LabelResult(oracle.LABELER, 1)
    if trees:
        with store.transaction() as con:
            result.n_rows_written = store.insert(con, "step_labels",
                                                 oracle.label_rows(oracle.oracle_labels(trees), run_id))
        result.n_batches_run = 1
    return result


def label_consensus(store: LineageStore, rollout_id: str, first: str = montecarlo.LABELER,
                    second: str = judge.LABELER, run_id: str | None = None) -> LabelResult:
    """Consensus filtering: a hard label of `first` kept where `second` gives the same one.
    Recomputed whole each time (one statement; cheap), so it follows its inputs."""
    n = labels_db.write_consensus(store, rollout_id, CONSENSUS, first, second, run_id)
    return LabelResult(CONSENSUS, 1, 1, n)


# --- agreement ----------------------------------------------------------------------------


def hard_labels(store: LineageStore, rollout_id: str) -> dict[str, dict[str, bool]]:
    """labeler -> node_id -> positive, from every labeler's `hard` rows on the rollout; the
    oracle's prefix-correct labels appear as `oracle_prefix`."""
    out: dict[str, dict[str, bool]] = {}
    for (labeler, kind), values in labels_db.label_values(store, rollout_id, ("hard", "prefix")).items():
        if kind == "prefix" and labeler != oracle.LABELER:
            continue
        out[f"{oracle.LABELER}_prefix" if kind == "prefix" else labeler] = labels_db.as_positive(values)
    return out


def oracle_region(trees: Sequence[Tree], prefix_ok: dict[str, bool]) -> set[str]:
    """Steps up to each solution's first error: those whose parent prefix is right (or is
    the problem itself). There a step is right exactly when its prefix is, so labels that
    estimate the prefix (Monte Carlo) and labels that rate the step (a judge) answer the same
    question: PRM800K's stop-at-the-first-error region."""
    parent = {n.node_id: n.parent_id for t in trees for n in t.nodes.values()}
    roots = {t.root.node_id for t in trees}
    return {n for n in prefix_ok if parent.get(n) in roots or prefix_ok.get(parent.get(n), False)}


def solutions_of(trees: Sequence[Tree]) -> list[list[str]]:
    """The step node ids of every finished solution (terminal leaf)."""
    return [[n.node_id for n in t.path(leaf)[1:]] for t in trees for leaf in t.terminals()]


def agreement_rows(store: LineageStore, rollout_id: str, run_id: str | None = None,
                   references: Sequence[str] = REFERENCE_LABELERS) -> list[dict]:
    """Every labeler against each reference labeler the rollout has (`references`, in order:
    a later reference is also measured against an earlier one), and the other labelers
    against each other. Against the oracle, steps in `oracle_region`; against any other
    labeler, the steps both label (human labelers rate up to the first error themselves).
    Only the reference is cut to its region: the labeler's first error may lie beyond it."""
    labels = hard_labels(store, rollout_id)
    trees = load_trees(store, rollout_id)
    solutions = solutions_of(trees)
    prefix_ok = labels.pop(f"{oracle.LABELER}_prefix", {})
    refs = [r for r in dict.fromkeys(references) if r in labels]
    others = sorted(n for n in labels if n not in refs)
    cost = labels_db.label_costs(store, rollout_id)
    pairs = []
    for i, ref in enumerate(refs):
        reference = labels[ref]
        if ref == oracle.LABELER:
            region = oracle_region(trees, prefix_ok)
            reference = {n: v for n, v in reference.items() if n in region}
        pairs += [(a, ref, labels[a], reference) for a in [*refs[i + 1:], *others]]
    pairs += [(a, b, labels[a], labels[b]) for i, a in enumerate(others) for b in others[i + 1:]]
    rows = []
    for name, ref_name, mine, ref in pairs:
        a = agreement(mine, ref, solutions)
        c = cost.get(name, {})
        rows.append({"rollout_id": rollout_id, "labeler": name, "reference": ref_name, **a.as_dict(),
                     "confusion": [list(r) for r in a.confusion],
                     "labeled_steps": c.get("steps", 0), "cost_tokens": int(c.get("tokens") or 0),
                     "created_run": run_id, "created_at": utcnow()})
    return rows
