"""Process-supervision files read (tasks/process_files), turned into trees and labels
(labeling/imported), and written back out in the same shapes (datasets/build), on the small
files of tests/process_files.py."""

import copy
import json

import datasets
import pytest

from qstar_dagster.datasets.build import (
    math_shepherd_rows,
    prm800k_rows,
    prm_rows,
    processbench_rows,
)
from qstar_dagster.labeling.agreement import agreement
from qstar_dagster.labeling.imported import build_import
from qstar_dagster.search.tree import check_tree
from qstar_dagster.tasks.loaders import ProblemFileError, detect_format, load_labeled, load_problems
from tests.conftest import write_jsonl
from tests.process_files import (
    MATH_SHEPHERD_ROWS,
    MS_QUESTION,
    PRM800K_ROWS,
    PROBLEM_A,
    PROBLEM_B,
    PROCESSBENCH_ROWS,
)

ROWS = {"prm800k": PRM800K_ROWS, "math_shepherd": MATH_SHEPHERD_ROWS, "processbench": PROCESSBENCH_ROWS}


def imported(tmp_path, format, rows=None):
    path = write_jsonl(tmp_path / f"{format}.jsonl", rows or ROWS[format])
    fmt, solutions = load_labeled(path)
    assert fmt == format
    return build_import(fmt, solutions, "set", "v1", str(path), "sha")


def by_path(imp, kind="hard"):
    """(problem, step texts from the root) -> label value: labels compared across imports."""
    texts = {}
    for t in imp.trees:
        for n in t.nodes.values():
            texts[n.node_id] = (t.problem.problem, tuple(x.text for x in t.path(n)[1:]))
    return {texts[r["node_id"]]: r["value"] for r in imp.label_rows if r["kind"] == kind}


def node(imp, problem, *steps):
    [t] = [t for t in imp.trees if t.problem.problem == problem]
    for n in t.nodes.values():
        if tuple(x.text for x in t.path(n)[1:]) == steps:
            return n
    raise KeyError(steps)


def labels_of(imp, n):
    return {r["kind"]: r for r in imp.label_rows if r["node_id"] == n.node_id}


@pytest.mark.parametrize("format", list(ROWS))
def test_each_format_is_detected_by_its_fields(format):
    assert detect_format(ROWS[format][0]) == format


def test_prm800k_alternatives_are_siblings_with_the_humans_ratings(tmp_path):
    imp = imported(tmp_path, "prm800k")
    assert all(check_tree(t) == [] for t in imp.trees)
    assert [t.problem.problem for t in imp.trees] == [PROBLEM_A, PROBLEM_B]
    first = "Multiplication first: $3\\cdot 4 = 12$."
    step1 = node(imp, PROBLEM_A, first)
    # the alternatives of step 2, and u4's pre-generated continuation, hang under one step-1 node
    assert len(step1.children) == 4
    wrong = labels_of(imp, node(imp, PROBLEM_A, first, "Then $2 + 12 = 15$."))
    assert (wrong["rating"]["value"], wrong["hard"]["value"]) == (-1.0, 0.0)
    right = node(imp, PROBLEM_A, first, "Then $2+12 = 14$.\n\n# Answer\n\n14")
    assert right.is_terminal and right.is_correct and right.answer == "14"  # finish_reason solution
    # a flagged step with a null rating: a node, flagged in its stats, with no label
    flagged = node(imp, PROBLEM_A, first, "I am not sure what to add.")
    assert labels_of(imp, flagged) == {} and not flagged.is_terminal
    [row] = [r for r in imp.node_rows if r["node_id"] == flagged.node_id]
    assert row["stats"]["flagged"] and row["stats"]["lines"] == [1]
    # rated by two labelers (u1: +1, u4: 0): mean rating, neutral-or-better is right, both counted
    both = labels_of(imp, step1)
    assert both["rating"]["value"] == 0.5 and both["hard"]["value"] == 1.0
    assert (both["hard"]["n_rollouts"], both["hard"]["n_correct"]) == (2, 2)
    assert json.loads(both["hard"]["raw"])["lines"] == [1, 4]
    # found_error: the path stops at the wrong step, the pre-generated rest is not taken
    stop = node(imp, PROBLEM_A, "Add first: $2+3=5$.")
    assert stop.children == [] and not stop.is_terminal and labels_of(imp, stop)["hard"]["value"] == 0.0
    # phase 2 labels that stop early: the rest of the pre-generated solution follows, unrated, and is graded
    tail = node(imp, PROBLEM_A, first, "So $2+12=14$.\n\n# Answer\n\n14")
    assert tail.is_terminal and tail.is_correct and labels_of(imp, tail) == {}


def test_prm800k_human_completions_continue_the_path_and_give_up_ends_nothing(tmp_path):
    imp = imported(tmp_path, "prm800k")
    model = node(imp, PROBLEM_B, "$10-7=4$.")
    human = node(imp, PROBLEM_B, "$10 - 7 = 3$.")
    assert model.children == [] and labels_of(imp, model)["hard"]["value"] == 0.0
    # the human step is right (the guideline has labelers write a right one) and the path goes on from it
    assert labels_of(imp, human)["rating"]["value"] == 1.0 and json.loads(labels_of(imp, human)["hard"]["raw"])["human"]
    after = node(imp, PROBLEM_B, "$10 - 7 = 3$.", "So it is 0.")
    assert labels_of(imp, after)["rating"]["value"] == 0.0 and labels_of(imp, after)["hard"]["value"] == 1.0
    assert not after.is_terminal  # give_up: no finished solution
    [tree_b] = [r for r in imp.tree_rows if r["prompt_id"] == imp.trees[1].problem.prompt_id]
    assert tree_b["spec"]["lines"] == [{"line": 3, "labeler": "u3", "timestamp": "2023-01-23T09:00:00",
                                        "generation": None, "is_quality_control_question": False,
                                        "finish_reason": "give_up"}]


def test_math_shepherd_labels_are_read_by_position_even_when_steps_contain_plus(tmp_path):
    imp = imported(tmp_path, "math_shepherd")
    ms = by_path(imp)
    assert ms[(MS_QUESTION, ("He has 2 + 3 = <<2+3=5>>5 apples.",))] == 1.0
    assert ms[(MS_QUESTION, ("He has 2 + 3 = 6 apples.",))] == 0.0
    sam = "Sam has 4 pens and loses 1. How many are left?"
    assert ms[(sam, ("4 - 1 = 2 + 1 = 3 pens.",))] == 0.0  # the '+' inside the step is text, the last one the label
    assert ms[(sam, ("4 - 1 = 2 + 1 = 3 pens.", "The answer is: 3"))] == 1.0
    problems = {p.problem: p for p in load_problems(tmp_path / "math_shepherd.jsonl")}
    # no answer in the file: the answer of the solution it calls right
    assert problems[MS_QUESTION].reference_answer == "5" and problems[MS_QUESTION].meta["answer_from"] == "right_solution"
    assert problems[MS_QUESTION].domain == "gsm8k"
    right = node(imp, MS_QUESTION, "He has 2 + 3 = <<2+3=5>>5 apples.", "The answer is: 5")
    wrong = node(imp, MS_QUESTION, "He has 2 + 3 = 6 apples.", "The answer is: 6")
    assert (right.is_terminal, right.is_correct, wrong.is_terminal, wrong.is_correct) == (True, True, True, False)


def test_processbench_labels_run_to_the_first_error_and_unknown_answers_are_said(tmp_path):
    imp = imported(tmp_path, "processbench")
    pb = by_path(imp)
    assert pb[("Compute $9-4$.", ("$9-4 = 5$.",))] == 1.0
    assert pb[("Compute $9-4$.", ("$9-4 = 5$.", "Doubling gives 10."))] == 0.0
    assert ("Compute $9-4$.", ("$9-4 = 5$.", "Doubling gives 10.", "So \\boxed{10}.")) not in pb  # after the error
    assert len([k for k in pb if k[0].startswith("Ann")]) == 2  # label -1: every step right
    problems = {p.problem: p for p in load_problems(tmp_path / "processbench.jsonl")}
    assert problems["Ann reads 4 pages a day. How many in 3 days?"].reference_answer == "12"
    assert problems["Compute $9-4$."].reference_answer == "" and problems["Compute $9-4$."].meta["answer_from"] == "unknown"
    leaf = node(imp, "Compute $7\\cdot 6$.", "$7 \\cdot 6 = 48$.", "Half of it is 24.", "So \\boxed{24}.")
    assert leaf.is_terminal and leaf.is_correct is False and leaf.answer == "24"  # the file's verdict


BAD = [
    ("prm800k", lambda r: r["label"]["steps"][0]["completions"][0].update(rating=2), "rating 2"),
    ("prm800k", lambda r: r["label"]["steps"][1].update(chosen_completion=7), "chosen_completion is 7"),
    ("prm800k", lambda r: r["label"].update(finish_reason="done"), "finish_reason is 'done'"),
    ("prm800k", lambda r: r["label"]["steps"][0].update(chosen_completion=None), "chooses no completion, yet 1"),
    ("prm800k", lambda r: r["question"].update(problem=""), "'question.problem' is empty"),
    ("math_shepherd", lambda r: r.update(label=r["label"].replace("+\nStep 2", "?\nStep 2")), "step 1's label is '?'"),
    ("math_shepherd", lambda r: r.update(input=r["input"].replace("Step 1:", "First:"),
                                          label=r["label"].replace("Step 1:", "First:")), "no 'Step 1:'"),
    ("math_shepherd", lambda r: r.update(label=r["label"].replace("He has", "She has")), "label differs from input"),
    ("processbench", lambda r: r.update(label=5), "label is 5 for 2 steps"),
    ("processbench", lambda r: r.update(final_answer_correct="yes"), "final_answer_correct is 'yes'"),
    ("processbench", lambda r: r.update(steps=["ok", ""]), "'steps[1]' is empty"),
]


@pytest.mark.parametrize("format,breaks,says", BAD)
def test_a_bad_line_names_file_line_and_fix(tmp_path, format, breaks, says):
    rows = copy.deepcopy(ROWS[format])
    breaks(rows[0])
    path = write_jsonl(tmp_path / "bad.jsonl", [ROWS[format][1], rows[0]])
    with pytest.raises(ProblemFileError, match=r"bad\.jsonl, line 2: .*Fix: ") as e:
        load_labeled(path)
    assert says in str(e.value)
    with pytest.raises(ProblemFileError):  # the prompt set's loader reads the same lines
        load_problems(path)


def test_an_explicit_format_that_the_lines_do_not_have_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "pb.jsonl", PROCESSBENCH_ROWS)
    with pytest.raises(ProblemFileError, match="line 1: not a prm800k line"):
        load_labeled(path, "prm800k")


def _hard(imp):
    return {r["node_id"]: r["value"] > 0.5 for r in imp.label_rows if r["kind"] == "hard"}


def _ratings(imp):
    return {r["node_id"]: r["value"] for r in imp.label_rows if r["kind"] == "rating"}


@pytest.mark.parametrize("format", list(ROWS))
def test_every_export_reimports_to_the_same_labels(tmp_path, format):
    imp = imported(tmp_path, format)
    hard = _hard(imp)
    rows = prm_rows(imp.trees, hard, {})
    shaped = {"math_shepherd": math_shepherd_rows(rows), "prm800k": prm800k_rows(imp.trees, rows, _ratings(imp)),
              "processbench": processbench_rows(imp.trees, hard)}
    for name, out in shaped.items():
        path = write_jsonl(tmp_path / "out" / f"{name}.jsonl", out)
        assert datasets.load_dataset("json", data_files=str(path), split="train").num_rows == len(out)
        again = imported(tmp_path / name, name, out)
        got = by_path(again)
        if name == "processbench" and format != "processbench":
            # it keeps only finished solutions' labels, up to their first error
            assert got and got == {k: v for k, v in by_path(imp).items() if k in got}
        else:
            assert got == by_path(imp), name
    # PRM800K keeps its own ratings (neutral stays neutral) through its own shape
    if format == "prm800k":
        again = imported(tmp_path / "r", "prm800k", shaped["prm800k"])
        assert by_path(again, "rating") == {k: float(round(v)) for k, v in by_path(imp, "rating").items()}


def test_processbench_metric_counts_a_missed_error_as_a_miss(tmp_path):
    """The first-error accuracy on erroneous solutions: a labeler that calls every step of a
    wrong solution right predicts no error and is wrong there (it used to drop out)."""
    imp = imported(tmp_path, "processbench")
    reference = _hard(imp)
    solutions = [[n.node_id for n in t.path(leaf)[1:]] for t in imp.trees for leaf in t.terminals()]
    every_step_right = {n.node_id: True for t in imp.trees for n in t.nodes.values() if n.parent_id}
    a = agreement(every_step_right, reference, solutions)
    assert a.n_solutions == 3
    assert (a.first_error_accuracy_erroneous, a.first_error_accuracy_correct, a.first_error_f1) == (0.0, 1.0, 0.0)
    perfect = agreement(reference | {n: False for n in every_step_right if n not in reference}, reference, solutions)
    assert perfect.first_error_f1 == 1.0
