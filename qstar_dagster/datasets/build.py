"""Filtered datasets from a labeled rollout: what training reads.

- `rft`: right, deduplicated solutions (prompt, completion), at most `max_per_problem` each;
- `prm`: TRL's stepwise-supervision format (prompt, completions = steps, labels = bools)
  from one labeler's hard labels, with its soft values (Monte Carlo) in `soft_labels`;
  a path is cut after its last labeled step (labelers that stop at the first error), and
  each dataset is also exported in Math-Shepherd's, PRM800K's and ProcessBench's shapes,
  which `tasks/process_files.py` reads back to the same labels;
- `step_pairs`: step-DPO pairs: one prefix, a next step the labeler calls right (chosen) and
  one it calls wrong (rejected), each ending with the step separator, except a step the
  policy ended its solution with, which ends bare: a trainer ends it with the end of
  sequence (`train_dpo`'s `completion_end`), so the pairs teach where a solution stops;
- `pairs`: whole-solution DPO pairs: one problem, a right and a wrong finished solution.

In every kind, `prompt` is what the model trained on the row reads before its completion:
the policy's templated prompt (rft, pairs), that prompt and the steps so far (step_pairs),
and the bare problem for a PRM, which reads `problem + PRM_SEPARATOR + steps`.

Each row keeps the node ids it came from (`node_ids`, or `chosen_ids` / `rejected_ids`),
which also go to the store's `dataset_members`, so a checkpoint trained on a dataset traces
back through labels and nodes to prompts and the policy that sampled them.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from qstar_dagster.labeling.agreement import first_error
from qstar_dagster.lineage import artifacts
from qstar_dagster.lineage.files import write_atomically
from qstar_dagster.lineage.labels import as_positive, label_values
from qstar_dagster.lineage.store import LineageStore, utcnow
from qstar_dagster.search.rollouts import load_trees
from qstar_dagster.search.tree import Node, Tree
from qstar_dagster.spec import option
from qstar_dagster.tasks.problem import content_id
from qstar_dagster.tasks.process_files import STEP_TAG

KINDS = ("rft", "prm", "step_pairs", "pairs")
PRM_EXPORTS = ("math_shepherd", "prm800k", "processbench")  # a prm dataset's files beside jsonl and parquet
# Part of every dataset id: bump it when the rows a spec produces change, so that a dataset
# recorded by earlier code is rebuilt instead of reused. 3: the PRM800K and ProcessBench files.
ROW_FORMAT = 3
# The same for one kind, where only its rows changed (ids of the others stay): step_pairs 1:
# a solution's last step ends bare, not with the separator.
KIND_FORMAT = {"step_pairs": 1}


@dataclass(frozen=True)
class DatasetSpec:
    kind: str
    labeler: str = option("mc", "prm and step_pairs: whose hard labels (mc, binary_search, judge, consensus, oracle)")
    max_per_problem: int | None = option(4, "rft: solutions per problem; pairs: pairs per problem; step_pairs: "
                                         "pairs per prefix; unset: all")
    seed: int = option(0, "seed of the sampling under max_per_problem")

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"dataset kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.max_per_problem is not None and self.max_per_problem < 1:
            raise ValueError(f"max_per_problem must be >= 1 or unset, got {self.max_per_problem}")


def dataset_labels(store: LineageStore, rollout_id: str, labeler: str) -> tuple[dict[str, bool], dict[str, float]]:
    """A labeler's (hard, soft) labels on the rollout: node id -> good step, node id -> share."""
    values = label_values(store, rollout_id, ("hard", "soft"), labeler)
    return as_positive(values.get((labeler, "hard"), {})), values.get((labeler, "soft"), {})


def _cap(items: list, k: int | None) -> list:
    return items if k is None else items[:k]


def rft_rows(trees: Sequence[Tree], spec: DatasetSpec) -> list[dict]:
    rows = []
    for t in trees:
        seen = set()
        for leaf in t.terminals():
            if not leaf.is_correct:
                continue
            path = t.path(leaf)[1:]
            completion = t.step_format.join([n.text for n in path])
            if completion in seen:
                continue
            seen.add(completion)
            rows.append({"prompt": t.prompt, "completion": completion, "prompt_id": t.problem.prompt_id,
                         "node_ids": [n.node_id for n in path]})
            if spec.max_per_problem is not None and len(seen) >= spec.max_per_problem:
                break
    return rows


def prm_rows(trees: Sequence[Tree], hard: dict[str, bool], soft: dict[str, float]) -> list[dict]:
    """One row per distinct root-to-leaf path with at least one labeled step: finished
    solutions and the partial ones a search pruned (their steps are labeled too)."""
    rows, seen = [], set()
    for t in trees:
        for leaf in t.leaves():
            path = t.path(leaf)[1:]
            labeled = []
            for n in path:
                if n.node_id not in hard:
                    break
                labeled.append(n)
            key = (t.problem.problem, tuple(n.text for n in labeled))
            if not labeled or key in seen:
                continue
            seen.add(key)
            rows.append({"prompt": t.problem.problem, "completions": [n.text for n in labeled],
                         "labels": [hard[n.node_id] for n in labeled],
                         "soft_labels": [soft.get(n.node_id) for n in labeled],
                         "prompt_id": t.problem.prompt_id, "node_ids": [n.node_id for n in labeled]})
    return rows


def math_shepherd_rows(prm: Sequence[dict]) -> list[dict]:
    """Math-Shepherd's format: `input` is the problem, then `Step k: <step> ки` per step;
    `label` the same text with + or - in each tag's place."""
    out = []
    for r in prm:
        steps = [f"Step {k}: {s}" for k, s in enumerate(r["completions"], start=1)]
        tagged = "\n".join(f"{s} {STEP_TAG}" for s in steps)
        label = "\n".join(f"{s} {'+' if ok else '-'}" for s, ok in zip(steps, r["labels"]))
        out.append({"input": f"{r['prompt']} {tagged}", "label": f"{r['prompt']} {label}", "node_ids": r["node_ids"]})
    return out


def _prm800k_rating(hard: bool, rating: float | None) -> int:
    """The labeler's own rating where it has one (a mean of several raters rounded), kept on
    the side of its hard label; else +1 or -1."""
    if rating is None:
        return 1 if hard else -1
    r = max(-1, min(1, round(rating)))
    return max(r, 0) if hard else -1


def prm800k_rows(trees: Sequence[Tree], prm: Sequence[dict], ratings: dict[str, float]) -> list[dict]:
    """PRM800K's shape, one line per prm row: `question` (problem, ground_truth_answer) and
    `label.steps`, each step that one completion with its rating; `finish_reason` is
    found_error when a step is wrong, solution when the path ends a solution, else give_up."""
    nodes = {n.node_id: (t, n) for t in trees for n in t.nodes.values()}
    out = []
    for r in prm:
        tree, last = nodes[r["node_ids"][-1]]
        steps = [{"completions": [{"text": text, "rating": _prm800k_rating(ok, ratings.get(node_id)), "flagged": None}],
                  "human_completion": None, "chosen_completion": 0}
                 for text, ok, node_id in zip(r["completions"], r["labels"], r["node_ids"])]
        finish = "found_error" if not all(r["labels"]) else "solution" if last.is_terminal else "give_up"
        out.append({"question": {"problem": r["prompt"], "ground_truth_answer": tree.problem.reference_answer or None},
                    "label": {"steps": steps, "finish_reason": finish}, "node_ids": r["node_ids"]})
    return out


def processbench_rows(trees: Sequence[Tree], hard: dict[str, bool]) -> list[dict]:
    """ProcessBench's shape, one line per distinct finished solution whose first error the
    labels decide: `steps`, `label` (index of the first wrong step, -1 for none) and
    `final_answer_correct`."""
    out, seen = [], set()
    for t in trees:
        for leaf in t.terminals():
            path = t.path(leaf)[1:]
            ids = [n.node_id for n in path]
            first = first_error(ids, hard)
            key = (t.problem.problem, tuple(n.text for n in path))
            if first is None or key in seen:
                continue
            seen.add(key)
            out.append({"id": f"{t.problem.prompt_id}-{len(seen)}", "problem": t.problem.problem,
                        "steps": [n.text for n in path], "label": first,
                        "final_answer_correct": bool(leaf.is_correct), "node_ids": ids})
    return out


def _step_completion(t: Tree, n: Node) -> str:
    """A step as a completion: with the separator where the solution goes on, bare where the
    policy ended it there (a step pair that never shows the end teaches a policy not to stop)."""
    return n.text if n.finished else n.text + t.step_format.separator


def step_pair_rows(trees: Sequence[Tree], hard: dict[str, bool], spec: DatasetSpec) -> list[dict]:
    rows = []
    for t in trees:
        for parent in t.nodes.values():
            kids = [t.nodes[c] for c in parent.children if c in t.nodes and t.nodes[c].node_id in hard]
            good = list({k.text: k for k in kids if hard[k.node_id]}.values())
            bad = list({k.text: k for k in kids if not hard[k.node_id]}.values())
            pairs = [(g, b) for g in good for b in bad if g.text != b.text]
            for g, b in _cap(pairs, spec.max_per_problem):
                rows.append({"prompt": t.prefix(parent), "chosen": _step_completion(t, g),
                             "rejected": _step_completion(t, b),
                             "prompt_id": t.problem.prompt_id, "chosen_ids": [g.node_id], "rejected_ids": [b.node_id]})
    return rows


def pair_rows(trees: Sequence[Tree], spec: DatasetSpec) -> list[dict]:
    rows = []
    for t in trees:
        finished = [leaf for leaf in t.terminals() if leaf.finished]
        text = {leaf.node_id: t.step_format.join([n.text for n in t.path(leaf)[1:]]) for leaf in finished}
        good = list({text[x.node_id]: x for x in finished if x.is_correct}.values())
        bad = list({text[x.node_id]: x for x in finished if not x.is_correct}.values())
        # Every wrong solution paired with a right one, the right ones taken in turn.
        pairs = [(good[i % len(good)], b) for i, b in enumerate(bad)] if good else []
        for g, b in _cap(pairs, spec.max_per_problem):
            rows.append({"prompt": t.prompt, "chosen": text[g.node_id], "rejected": text[b.node_id],
                         "prompt_id": t.problem.prompt_id,
                         "chosen_ids": [n.node_id for n in t.path(g)[1:]],
                         "rejected_ids": [n.node_id for n in t.path(b)[1:]]})
    return rows


@dataclass
class BuiltDataset:
    dataset_id: str
    kind: str
    rows: list[dict]
    files: dict[str, Path]  # format -> path
    reused: bool
    dataset_row: dict | None = None
    member_rows: list[dict] | None = None


def _members(dataset_id: str, rows: Sequence[dict]) -> list[dict]:
    out = []
    for i, r in enumerate(rows):
        for field, role in (("node_ids", "step"), ("chosen_ids", "chosen"), ("rejected_ids", "rejected")):
            out += [{"dataset_id": dataset_id, "row_idx": i, "node_id": n, "role": role} for n in r.get(field, [])]
    return out


def export(rows: Sequence[dict], base: Path) -> dict[str, Path]:
    """`<base>.jsonl` and `<base>.parquet`, both readable by `datasets.load_dataset`."""
    import polars as pl

    base.parent.mkdir(parents=True, exist_ok=True)
    jsonl, parquet = base.with_suffix(".jsonl"), base.with_suffix(".parquet")
    write_atomically(jsonl, lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in rows)))
    write_atomically(parquet, lambda p: pl.DataFrame(list(rows) or None).write_parquet(p))
    return {"jsonl": jsonl, "parquet": parquet}


def build_dataset(store: LineageStore, rollout_id: str, spec: DatasetSpec, out_dir: Path,
                  run_id: str | None = None) -> BuiltDataset:
    """Rows of `spec.kind` from `rollout_id`, exported under `out_dir`. The dataset id names the
    rollout, the spec and the labels it read, so rebuilding from unchanged inputs is a no-op."""
    hard, soft = dataset_labels(store, rollout_id, spec.labeler) if spec.kind in ("prm", "step_pairs") else ({}, {})
    if spec.kind in ("prm", "step_pairs") and not hard:
        raise LookupError(f"rollout {rollout_id} has no {spec.labeler!r} labels; materialize the labeler's asset "
                          f"first or pick another labeler (mc, binary_search, judge, consensus, oracle)")
    fingerprint = hashlib.sha256(json.dumps(sorted(hard.items())).encode()).hexdigest()[:16]
    dataset_id = content_id("ds", spec.kind, rollout_id, asdict(spec), fingerprint, ROW_FORMAT,
                            *([KIND_FORMAT[spec.kind]] if spec.kind in KIND_FORMAT else []))
    base = out_dir / dataset_id
    recorded = artifacts.dataset_row(store, dataset_id)
    files = {"jsonl": base.with_suffix(".jsonl"), "parquet": base.with_suffix(".parquet")}
    if spec.kind == "prm":
        files |= {name: out_dir / f"{dataset_id}.{name}.jsonl" for name in PRM_EXPORTS}
    if recorded and all(p.exists() for p in files.values()):
        return BuiltDataset(dataset_id, spec.kind, [json.loads(x) for x in files["jsonl"].read_text().splitlines()],
                            files, True)

    trees = load_trees(store, rollout_id)
    rows = {"rft": lambda: rft_rows(trees, spec), "prm": lambda: prm_rows(trees, hard, soft),
            "step_pairs": lambda: step_pair_rows(trees, hard, spec), "pairs": lambda: pair_rows(trees, spec)}[spec.kind]()
    # An empty dataset is a finding (e.g. a policy that solves nothing yields no RFT rows): it
    # is recorded with 0 rows, and the training stages that read it say so and train nothing.
    files = export(rows, base)
    if spec.kind == "prm":
        ratings = label_values(store, rollout_id, ("rating",), spec.labeler).get((spec.labeler, "rating"), {})
        shaped = {"math_shepherd": math_shepherd_rows(rows), "prm800k": prm800k_rows(trees, rows, ratings),
                  "processbench": processbench_rows(trees, hard)}
        for name, out in shaped.items():
            path = out_dir / f"{dataset_id}.{name}.jsonl"
            write_atomically(path, lambda p, out=out: p.write_text(
                "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out)))
            files[name] = path
    if recorded:  # its files were lost: written again, the record stands
        return BuiltDataset(dataset_id, spec.kind, rows, files, True)
    digest = hashlib.sha256(files["jsonl"].read_bytes()).hexdigest()
    dataset_row = {"dataset_id": dataset_id, "kind": spec.kind,
                   "spec": {**asdict(spec), "rollout_id": rollout_id, "files": {k: str(v) for k, v in files.items()}},
                   "n_rows": len(rows), "path": str(files["jsonl"]), "sha256": digest, "created_run": run_id,
                   "created_at": utcnow()}
    return BuiltDataset(dataset_id, spec.kind, rows, files, False, dataset_row, _members(dataset_id, rows))


def record(store: LineageStore, con, built: BuiltDataset) -> None:
    if not built.reused:
        store.insert(con, "datasets", [built.dataset_row])
        store.insert(con, "dataset_members", built.member_rows)


def label_balance(rows: Sequence[dict]) -> dict[int, tuple[int, int]]:
    """prm: per step index, (positive, negative) counts: what the metadata plot shows."""
    out: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for r in rows:
        for i, ok in enumerate(r["labels"]):
            out[i + 1][0 if ok else 1] += 1
    return {k: tuple(v) for k, v in sorted(out.items())}


def read_rows(dataset: dict) -> list[dict]:
    return [json.loads(line) for line in Path(dataset["path"]).read_text().splitlines()]
