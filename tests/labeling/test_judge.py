"""The judge's template and its strict parser, and judge labels from a real model."""

import pytest

from qstar_dagster.generation.base import Completion
from qstar_dagster.labeling.judge import (
    JUDGE_TEMPLATE,
    format_ratings,
    judge,
    judge_prompt,
    label_trees,
    parse_ratings,
    truncate_at_first_negative,
)
from tests.trees import tree_of


def test_prompt_carries_the_guideline_the_problem_and_numbered_steps():
    p = judge_prompt("Compute left to right: 1 + 2", ["1 + 2 = 3", "The answer is 3"])
    assert "PRM800K" in p and "stop at the first negative" in p
    assert "Problem: Compute left to right: 1 + 2\nStep 1: 1 + 2 = 3\nStep 2: The answer is 3\nRatings:\n" in p
    assert JUDGE_TEMPLATE.count("{steps}") == 1


@pytest.mark.parametrize("ratings", [[1, 1, 1], [1, 0, -1], [-1], [0, 0, 0]])
def test_what_the_judge_is_trained_to_write_parses_back(ratings):
    assert parse_ratings(format_ratings(ratings), n_steps=3) == ratings


@pytest.mark.parametrize("text, n_steps, expected", [
    ("Step 1: positive\nStep 2: negative\n", 4, [1, -1]),  # stops at the first negative
    ("\n  Step 1: Positive.\n\nStep 2: NEUTRAL\n", 2, None),  # a blank line inside is not the format
    ("Step 1: Positive.\nStep 2: NEUTRAL\n\n", 2, [1, 0]),  # case and a final period are fine
    ("Step 1: positive\nStep 2: positive", 3, None),  # stopped early with no negative step
    ("Step 1: negative\nStep 2: positive", 2, None),  # went on after the first negative
    ("Step 1: positive\nStep 3: positive", 3, None),  # numbering skips
    ("Step 2: positive", 2, None),  # does not start at 1
    ("Step 1: positive\nStep 2: positive\nStep 3: positive", 2, None),  # more steps than the solution has
    ("Step 1: good", 1, None),  # not a rating
    ("Sure! Step 1: positive", 1, None),  # chatter is not guessed around
    ("", 1, None),
])
def test_parser_is_strict(text, n_steps, expected):
    assert parse_ratings(text, n_steps) == expected


def test_truncate_at_first_negative():
    assert truncate_at_first_negative([1, 0, -1, 1, -1]) == [1, 0, -1]
    assert truncate_at_first_negative([1, 1]) == [1, 1]


class ScriptedJudge:
    """A Generator whose answer for each prompt is given: the only stand-in in these tests,
    used where the point is what happens to a given answer text."""

    name = "scripted"

    def __init__(self, answer):
        self.answer, self.prompts = answer, []

    def generate(self, prompts, params):
        self.prompts += prompts
        return [[Completion(self.answer(p), 7, 0.0, "stop")] for p in prompts]


def test_label_rows_rate_steps_up_to_the_first_negative_and_keep_unparsed_raw():
    tree = tree_of([["a", "b", "c"], ["a", "x"], ["a", "y"]])

    def answer(prompt):
        if "Step 2: b" in prompt:
            return "Step 1: positive\nStep 2: negative\n"
        if "Step 2: x" in prompt:
            return "Step 1: neutral\nStep 2: positive\n"
        return "I think it is fine"

    gen = ScriptedJudge(answer)
    rows = label_trees([tree], gen, checkpoint="ck_j", run_id="run")
    by = {(tree.nodes[r["node_id"]].text, r["kind"]): r for r in rows}
    assert by[("a", "rating")]["value"] == 1.0 and by[("a", "hard")]["value"] == 1.0  # first path labels a
    assert by[("b", "rating")]["value"] == -1.0 and by[("b", "hard")]["value"] == 0.0
    assert ("c", "hard") not in by  # after the first negative: unlabeled
    assert by[("x", "rating")]["value"] == 1.0
    assert by[("y", "unparsed")]["value"] is None and by[("y", "unparsed")]["raw"] == "I think it is fine"
    assert ("y", "hard") not in by
    assert {r["labeler_checkpoint"] for r in rows} == {"ck_j"} and {r["created_run"] for r in rows} == {"run"}
    assert sum(r["cost_tokens"] for r in rows) == 3 * 7  # each judgement's tokens counted once
    assert len(gen.prompts) == 3


def test_identical_solutions_are_judged_once():
    gen = ScriptedJudge(lambda p: "Step 1: positive\n")
    out = judge(gen, [("p", ["s"]), ("p", ["s"]), ("q", ["s"])])
    assert len(gen.prompts) == 2 and [j.ratings for j in out] == [[1], [1], [1]]
