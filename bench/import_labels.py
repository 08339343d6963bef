"""Benchmark: how fast a process-supervision file is imported, against only parsing its JSON.

PRM800K's phase-2 training file is about 97,000 lines of about 15 rated steps each. This
writes a PRM800K-shaped file of `--lines` lines (problems repeated so that solutions share
prefixes and alternatives, as in the real file), then times, side by side in one run:

- (a) plain: `json.loads` of every line (the floor any importer pays);
- (b) ours, read: the lines checked and parsed (`load_labeled`);
- (c) ours, whole import: read, trees and labels built, and written to a fresh DuckDB store
  in one transaction (what `imported_labels` does after `prompt_set`).

Last line: JSON.

    python bench/import_labels.py --lines 20000
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qstar_dagster.labeling.imported import build_import
from qstar_dagster.lineage import LineageStore
from qstar_dagster.lineage.rollouts import write_whole_rollout
from qstar_dagster.tasks.loaders import load_labeled, load_problems


def synthetic_line(rng: random.Random, problem: int, steps: int) -> dict:
    """A PRM800K phase-2-like line: single completions, a few alternatives after an error."""
    label_steps, error_at = [], rng.randrange(steps + 3)  # often no error at all
    for k in range(steps):
        # the first steps of a problem's solutions often agree, so they share tree nodes
        text = f"Step {k} of problem {problem}: we compute {rng.randrange(3) if k < 2 else rng.randrange(10**6)}."
        completions = [{"text": text, "rating": -1 if k == error_at else rng.choice([0, 1, 1, 1]), "flagged": None}]
        if k == error_at:
            completions += [{"text": f"{text} (alternative {j})", "rating": rng.choice([-1, 0, 1]), "flagged": False}
                            for j in range(rng.randrange(4))]
        label_steps.append({"completions": completions, "human_completion": None,
                            "chosen_completion": None if k == error_at else 0})
        if k == error_at:
            break
    finish = "found_error" if error_at < steps else "solution"
    if finish == "solution":
        label_steps[-1]["completions"][0]["text"] += f"\n\n# Answer\n\n{problem}"
    return {"labeler": f"u{rng.randrange(50)}", "timestamp": "2023-01-01T00:00:00", "generation": 1,
            "is_quality_control_question": False,
            "question": {"problem": f"Problem {problem}: what is the answer?", "ground_truth_answer": str(problem)},
            "label": {"steps": label_steps, "total_time": 1000, "finish_reason": finish}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=20000)
    ap.add_argument("--solutions-per-problem", type=int, default=8)
    ap.add_argument("--steps", type=int, default=15)
    args = ap.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "prm800k-synthetic.jsonl"
        path.write_text("".join(json.dumps(synthetic_line(rng, i // args.solutions_per_problem, args.steps)) + "\n"
                                for i in range(args.lines)))
        size_mb = path.stat().st_size / 2**20

        t = time.perf_counter()
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        plain = time.perf_counter() - t

        t = time.perf_counter()
        fmt, solutions = load_labeled(path)
        read = time.perf_counter() - t

        t = time.perf_counter()
        fmt, solutions = load_labeled(path)
        problems = load_problems(path)
        store = LineageStore(Path(tmp) / "lineage.duckdb")
        with store.transaction() as con:
            version = store.write_prompt_set(con, "synthetic", str(path), problems, None).version
        built = build_import(fmt, solutions, "synthetic", version, str(path), "bench")
        write_whole_rollout(store, built.rollout_id, built.node_rows, built.label_rows, built.tree_rows)
        whole = time.perf_counter() - t
        steps = sum(len(s.slots) for s in solutions)

    print(f"{len(rows):,} lines ({size_mb:.1f} MB), {steps:,} step slots, {len(built.trees):,} trees, "
          f"{len(built.node_rows):,} nodes, {len(built.label_rows):,} label rows")
    print(f"{'':<34}{'seconds':>9}{'lines/s':>11}{'vs plain':>10}")
    for name, sec in (("(a) plain: json.loads", plain), ("(b) ours: read and check", read),
                      ("(c) ours: read, build, write", whole)):
        print(f"{name:<34}{sec:>9.2f}{len(rows) / sec:>11,.0f}{sec / plain:>9.1f}x")
    print(json.dumps({"lines": len(rows), "mb": round(size_mb, 1), "step_slots": steps, "nodes": len(built.node_rows),
                      "label_rows": len(built.label_rows), "plain_s": round(plain, 2), "read_s": round(read, 2),
                      "import_s": round(whole, 2), "import_lines_per_s": round(len(rows) / whole)}))


if __name__ == "__main__":
    main()
