"""The stages grade, label and vote through the domain interface, so a Countdown prompt set
goes through them unchanged in their cores: trees grade their leaves with the domain, the
oracle labels Countdown steps (valid and still solvable), and evaluation reports no
majority vote where votes mean nothing."""

from qstar_dagster.datasets.build import DatasetSpec, step_pair_rows
from qstar_dagster.evaluation.evaluate import EvalSpec, policy_metrics, prm_metrics, sample
from qstar_dagster.generation.base import Completion
from qstar_dagster.labeling.oracle import oracle_labels
from qstar_dagster.search.tree import Tree
from qstar_dagster.tasks.problem import policy_prompt
from qstar_dagster.tasks.prompt_sets import builtin_problems
from qstar_dagster.tasks.steps import LINE

PROBLEM = next(p for p in builtin_problems("game24") if p.problem == "Make 24 from: 4 7 8 8")
RIGHT = ["8 - 4 = 4 (left: 4 7 8)", "7 - 4 = 3 (left: 3 8)", "3 * 8 = 24 (left: 24)"]
DEAD_END = ["4 * 7 = 28 (left: 8 8 28)", "8 + 8 = 16 (left: 16 28)", "28 - 16 = 12 (left: 12)"]
SLIP = ["8 - 4 = 4 (left: 4 7 8)", "7 - 4 = 3 (left: 3 8)", "3 * 8 = 25 (left: 25)"]


def _tree(paths: list[list[str]]) -> Tree:
    tree = Tree("t", PROBLEM, policy_prompt(PROBLEM.problem), LINE, 6)
    for steps in paths:
        node = tree.root
        for i, text in enumerate(steps):
            node = next((tree.nodes[c] for c in node.children if tree.nodes[c].text == text), None) or \
                tree.add_child(node, Completion(text, 3, -1.0, "stop" if i < len(steps) - 1 else "eos",
                                                stop_string="\n" if i < len(steps) - 1 else None))
    return tree


def test_a_countdown_tree_grades_its_leaves_and_gets_oracle_labels():
    tree = _tree([RIGHT, DEAD_END, SLIP])
    leaves = {tuple(n.text for n in tree.path(leaf)[1:]): leaf for leaf in tree.terminals()}
    assert leaves[tuple(RIGHT)].is_correct and leaves[tuple(RIGHT)].answer == "24"
    assert not leaves[tuple(DEAD_END)].is_correct and not leaves[tuple(SLIP)].is_correct
    labels = oracle_labels([tree])
    by_text = {tree.nodes[n].text: v for n, v in labels.items()}
    assert by_text["8 - 4 = 4 (left: 4 7 8)"] == (True, True)
    assert by_text["4 * 7 = 28 (left: 8 8 28)"] == (False, False)  # valid, but a dead end
    assert by_text["3 * 8 = 25 (left: 25)"] == (False, False)  # a slip of arithmetic


def test_countdown_step_pairs_end_a_last_step_bare_and_the_others_with_the_separator():
    tree = _tree([RIGHT, DEAD_END, SLIP])
    hard = {n: prefix_ok for n, (_, prefix_ok) in oracle_labels([tree]).items()}
    rows = {r["chosen"]: r["rejected"] for r in step_pair_rows([tree], hard, DatasetSpec(kind="step_pairs"))}
    # the solution's last step: the trainer ends it with the end of sequence, so DPO learns to stop there
    assert rows["3 * 8 = 24 (left: 24)"] == "3 * 8 = 25 (left: 25)"
    assert rows["8 - 4 = 4 (left: 4 7 8)\n"] == "4 * 7 = 28 (left: 8 8 28)\n"  # the solution goes on
    assert len(rows) == 2


class Scripted:
    def __init__(self, greedy: str, samples: list[str]):
        self.greedy, self.samples = greedy, samples

    def generate(self, prompts, params):
        def done(text):
            return Completion(text=text, n_tokens=len(text), logprob=0.0, finish_reason="stop")

        if params.temperature == 0:
            return [[done(self.greedy)] for _ in prompts]
        return [[done(t) for t in self.samples[: params.n]] for _ in prompts]


def test_countdown_evaluation_has_success_rates_and_no_votes():
    sampled = sample(Scripted(LINE.join(SLIP), [LINE.join(DEAD_END), LINE.join(RIGHT)]), [PROBLEM],
                     EvalSpec(ns=(1, 2)))
    metrics = policy_metrics(sampled, [1, 2])
    # no majority@N; a random pick among the first 2 is right half the time
    assert metrics == {("greedy", 1): 0.0, ("pass", 1): 0.0, ("pass", 2): 1.0, ("random", 1): 0.0, ("random", 2): 0.5}
    scores = [[[0.9, 0.1, 0.1], [0.8, 0.8, 0.8]]]  # the PRM prefers the right sample
    prm = prm_metrics(sampled, scores, [2])
    assert prm[("prm_best_of:min", 2)] == 1.0 and ("prm_vote", 2) not in prm
