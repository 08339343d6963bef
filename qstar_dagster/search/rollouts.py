"""Rollouts: one search config run over every problem of a prompt set, into the store.

Problems go through the search in fixed batches (positions in the prompt set), each with a
seed derived from its problems and the config's seed, and each batch's trees are written
in one transaction. So a tree id names everything that decides the tree, a batch is either
wholly in the store or not at all, a re-run skips the batches already there (writing
nothing when all are), and a killed run resumes with the same trees an uninterrupted one
would have made.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from qstar_dagster.generation.base import Generator
from qstar_dagster.lineage.artifacts import checkpoint_template
from qstar_dagster.lineage.batches import write_batches
from qstar_dagster.lineage.rollouts import tree_ids, tree_records
from qstar_dagster.lineage.store import LineageStore, utcnow
from qstar_dagster.search.algorithms import SearchSpec, SearchStats, search
from qstar_dagster.search.tree import Tree
from qstar_dagster.search.value import make_value_function
from qstar_dagster.spec import id_settings
from qstar_dagster.tasks.problem import DEFAULT_PROMPT_TEMPLATE, Problem, content_id, policy_prompt
from qstar_dagster.tasks.steps import step_format

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Batch:
    index: int
    problems: tuple[Problem, ...]
    seed: int
    tree_ids: tuple[str, ...]


@dataclass(frozen=True)
class RolloutPlan:
    rollout_id: str
    prompt_set: str
    prompt_set_version: str
    policy_checkpoint: str | None
    spec: SearchSpec
    template: str
    batches: tuple[Batch, ...]

    @property
    def n_problems(self) -> int:
        return sum(len(b.problems) for b in self.batches)


def skip_past(n: int, batch_size: int) -> int:
    """The least skip_problems (a multiple of batch_size) whose window starts after the first n problems."""
    return -(-n // batch_size) * batch_size


def plan_rollout(prompt_set: str, version: str, problems: Sequence[Problem], policy_checkpoint: str | None,
                 spec: SearchSpec, batch_size: int = 64, template: str = DEFAULT_PROMPT_TEMPLATE) -> RolloutPlan:
    if batch_size < 1:
        raise ValueError(f"rollout batch_size must be >= 1, got {batch_size}")
    if not problems:
        raise ValueError(f"prompt set {prompt_set!r} has no problems to search")
    separators = {step_format(p.domain).separator for p in problems}
    if len(separators) > 1:  # one stop string per generator call
        raise ValueError(f"prompt set {prompt_set!r} mixes step formats {sorted(separators)}; "
                         "split it into one prompt set per domain")
    if len(domains := {p.domain for p in problems}) == 1:  # else each tree reads its own domain's
        spec = spec.for_domain(domains.pop())  # what the domain fills in is recorded, and hashed as if set
    key = id_settings(spec)  # a spec without a PRM hashes as before PRMs existed
    rollout_id = content_id("r", prompt_set, version, policy_checkpoint, key, batch_size, template)
    batches = []
    for index, start in enumerate(range(0, len(problems), batch_size)):
        chunk = tuple(problems[start:start + batch_size])
        key = hashlib.sha256(repr((spec.seed, [p.prompt_id for p in chunk])).encode()).digest()
        seed = int.from_bytes(key[:4], "little")
        tree_ids = tuple(content_id("t", rollout_id, p.prompt_id, seed) for p in chunk)
        batches.append(Batch(index, chunk, seed, tree_ids))
    return RolloutPlan(rollout_id, prompt_set, version, policy_checkpoint, spec, template, tuple(batches))


@dataclass
class RolloutResult:
    rollout_id: str
    n_batches: int
    n_batches_run: int  # batches searched by this call (the rest were in the store already)
    n_trees_written: int
    n_nodes_written: int
    stats: SearchStats  # of the batches this call searched


def run_rollout(store: LineageStore, plan: RolloutPlan, load_generator: Callable[[], Generator],
                run_id: str | None = None, on_batch: Callable[[int, int], None] | None = None,
                load_prm: Callable[[str], object] | None = None) -> RolloutResult:
    """Search every batch of `plan` not yet in the store and write its trees and nodes.
    The policy is loaded (`load_generator()`) only if some batch is missing, and so is the
    PRM of a PRM-guided plan (`load_prm(checkpoint path)`, a step scorer). `on_batch(done,
    total)` is called after each batch (progress; tests use it to stop a run)."""
    done = tree_ids(store, plan.rollout_id)
    todo = [b for b in plan.batches if not set(b.tree_ids) <= done]
    log.info("rollout %s: %s on %s (%d problems, %d batches; %d already in the store)", plan.rollout_id,
             plan.spec.algorithm, plan.prompt_set, plan.n_problems, len(plan.batches), len(plan.batches) - len(todo))
    result = RolloutResult(plan.rollout_id, len(plan.batches), 0, 0, 0, SearchStats())
    if not todo:
        return result
    generator = load_generator()
    prm = None
    if plan.spec.value == "prm":
        if load_prm is None:
            raise ValueError(f"rollout {plan.rollout_id} is guided by a PRM: pass load_prm to run_rollout")
        prm = load_prm(store.checkpoint(plan.spec.prm_checkpoint, "prm")["path"])
    value = make_value_function(plan.spec.value, generator, plan.spec.mc_rollouts, prm)

    def work(batch: Batch):
        trees = [Tree(tree_id, p, policy_prompt(p.problem, plan.template), step_format(p.domain), plan.spec.max_depth)
                 for tree_id, p in zip(batch.tree_ids, batch.problems)]
        _, stats = search(trees, plan.spec, generator, value, seed=batch.seed)
        result.stats.add(stats)
        node_rows = [row for t in trees for row in t.rows(plan.policy_checkpoint, plan.spec.algorithm, run_id)]
        tree_rows = [_tree_row(plan, t, stats.seconds / len(trees), run_id) for t in trees]
        # trees last: a tree row in the store means its nodes are (one transaction anyway)
        return {"nodes": node_rows, "trees": tree_rows}, f"{len(node_rows)} nodes, {stats.tokens_per_second:.0f} tokens/s"

    for n in write_batches(store, todo, work, f"rollout {plan.rollout_id}", on_batch):
        result.n_nodes_written += n["nodes"]
        result.n_trees_written += n["trees"]
        result.n_batches_run += 1
    return result


def _tree_row(plan: RolloutPlan, tree: Tree, seconds: float, run_id: str | None) -> dict:
    selected = tree.selected_leaf()
    return {
        "tree_id": tree.tree_id, "rollout_id": plan.rollout_id, "prompt_id": tree.problem.prompt_id,
        "prompt_set": plan.prompt_set, "prompt_set_version": plan.prompt_set_version,
        "policy_checkpoint": plan.policy_checkpoint, "search": plan.spec.algorithm,
        "value_function": f"prm:{plan.spec.prm_checkpoint}" if plan.spec.value == "prm" else plan.spec.value,
        "spec": asdict(plan.spec), "n_nodes": len(tree.nodes),
        "generated_tokens": tree.generated_tokens, "value_tokens": tree.value_tokens, "seconds": seconds,
        "selected_node": selected and selected.node_id, "selected_correct": selected and bool(selected.is_correct),
        "any_correct": any(n.is_correct for n in tree.terminals()), "created_run": run_id, "created_at": utcnow(),
    }


def load_trees(store: LineageStore, rollout_id: str) -> list[Tree]:
    """The trees of a rollout, rebuilt from the store (nodes in the order they were made)."""
    records = tree_records(store, rollout_id)
    if not records:
        raise LookupError(f"rollout {rollout_id!r} has no trees in {store.path}; materialize tot_rollouts first")
    trees = []
    for m, rows in records:
        template = checkpoint_template({"config": m["policy_config"]})
        problem = Problem(m["problem"], m["reference_answer"], m["reference_solution"], m["domain"])
        trees.append(Tree.from_rows(m["tree_id"], problem, policy_prompt(problem.problem, template),
                                    step_format(problem.domain), json.loads(m["spec"])["max_depth"], rows))
    return trees
