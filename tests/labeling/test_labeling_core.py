"""Monte Carlo, binary-search and oracle labels on real trees from a trained policy, and the
agreement metrics on hand-checked cases."""

import math

import pytest

from qstar_dagster.generation.base import Completion
from qstar_dagster.generation.hf import TransformersGenerator
from qstar_dagster.labeling import binary_search, montecarlo, oracle
from qstar_dagster.labeling.agreement import agreement, first_error, step_agreement
from qstar_dagster.search.algorithms import SearchSpec, search
from qstar_dagster.search.estimate import EstimatorSpec, PrefixEstimator
from qstar_dagster.search.tree import Tree
from qstar_dagster.search.value import NoValue
from qstar_dagster.tasks.arith import generate_problems
from qstar_dagster.tasks.problem import Problem, policy_prompt
from qstar_dagster.tasks.steps import LINE

from ..conftest import EASY_ARITH


@pytest.fixture(scope="module")
def gen(arith_policy_dir):
    return TransformersGenerator(str(arith_policy_dir))


@pytest.fixture(scope="module")
def trees(gen):
    spec = SearchSpec(algorithm="beam", k=3, beam_width=3, value="none", max_nodes=40)
    problems = generate_problems(10, seed=7, spec=EASY_ARITH)
    trees = [Tree(f"t{i}", p, policy_prompt(p.problem), LINE, spec.max_depth) for i, p in enumerate(problems)]
    return search(trees, spec, gen, NoValue(), seed=3)[0]


def test_monte_carlo_labels_reuse_the_tree_and_sample_only_what_is_missing(trees, gen):
    spec = EstimatorSpec(n=4, max_new_tokens=48, share_completions=False)
    reused = montecarlo.label_trees(trees, PrefixEstimator(gen, spec))
    fresh = montecarlo.label_trees(trees, PrefixEstimator(gen, EstimatorSpec(n=4, max_new_tokens=48, reuse_tree=False,
                                                                            share_completions=False)))
    assert reused.keys() == fresh.keys() == {n.node_id for t in trees for n in t.nodes.values() if n.parent_id}
    seen_prefixes = set()
    for t in trees:
        for node in t.nodes.values():
            if node.parent_id is None:
                continue
            e = reused[node.node_id]
            if node.is_terminal:  # a finished step is its own rollout
                assert (e.n_rollouts, e.n_correct, e.cost_tokens) == (1, int(bool(node.is_correct)), 0)
                continue
            if t.prefix(node) in seen_prefixes:  # the same step sampled twice: estimated once
                assert e.cost_tokens == 0 and e.n_reused == e.n_rollouts == 4
                continue
            seen_prefixes.add(t.prefix(node))
            finished = [d for d in t.descendants(node) if d.is_terminal and not d.truncated]
            assert e.n_rollouts == 4 and e.n_reused == min(4, len(finished))
            assert (e.cost_tokens == 0) == (len(finished) >= 4)
            assert e.hard == float(e.n_correct > 0) and e.soft == e.n_correct / 4
    assert sum(e.cost_tokens for e in reused.values()) < sum(e.cost_tokens for e in fresh.values())
    rows = montecarlo.label_rows(reused, run_id="r")
    assert {(r["kind"]) for r in rows} == {"hard", "soft"} and len(rows) == 2 * len(reused)


class Scripted:
    """Answers every prompt with given completion texts: here the point is which node a
    given sample is credited to."""

    name = "scripted"

    def __init__(self, texts):
        self.texts, self.calls = texts, []

    def generate(self, prompts, params):
        self.calls.append((list(prompts), params.n))
        return [[Completion(t, 5, -1.0, "stop") for t in self.texts[: params.n]] for _ in prompts]


def test_a_sample_is_shared_with_the_deeper_nodes_whose_steps_it_repeats():
    problem = Problem("Compute left to right: 1 + 2 + 4", "7", domain="arith")
    tree = Tree("t", problem, policy_prompt(problem.problem), LINE, 6)
    a = tree.add_child(tree.root, Completion("1 + 2 = 3", 5, -1.0, "stop", stop_string="\n"))
    b = tree.add_child(a, Completion("3 + 4 = 7", 5, -1.0, "stop", stop_string="\n"))
    gen = Scripted(["3 + 4 = 7\nThe answer is 7", "3 + 4 = 7\nThe answer is 9", "3 + 4 = 8\nThe answer is 8",
                    "3 + 4 = 7\nThe answer is 7"])
    est = PrefixEstimator(gen, EstimatorSpec(n=4, reuse_tree=False))
    eb, ea = est.estimate([(tree, b), (tree, a)])  # asked deep first, estimated shallow first
    assert (ea.n_rollouts, ea.n_correct, ea.n_reused) == (4, 2, 0)
    # b received the three samples that went through "3 + 4 = 7" (2 right), and sampled one more.
    assert (eb.n_rollouts, eb.n_reused) == (4, 3) and eb.n_correct == 2 + 1
    assert [n for _, n in gen.calls] == [4, 1]
    off = PrefixEstimator(Scripted(gen.texts), EstimatorSpec(n=4, reuse_tree=False, share_completions=False))
    assert off.estimate([(tree, b)])[0].n_reused == 0


def test_sharing_samples_saves_tokens_on_real_trees(trees, gen):
    base = {"n": 4, "max_new_tokens": 48, "reuse_tree": False}
    shared = montecarlo.label_trees(trees, PrefixEstimator(gen, EstimatorSpec(**base)))
    alone = montecarlo.label_trees(trees, PrefixEstimator(gen, EstimatorSpec(**base, share_completions=False)))
    assert sum(e.cost_tokens for e in shared.values()) < sum(e.cost_tokens for e in alone.values())
    terminal = {n.node_id for t in trees for n in t.terminals()}
    assert all(e.n_rollouts == (1 if n in terminal else 4) for n, e in shared.items())
    assert any(e.n_reused for n, e in shared.items() if n not in terminal)


def test_monte_carlo_values_track_the_oracle(trees, gen):
    estimates = montecarlo.label_trees(trees, PrefixEstimator(gen, EstimatorSpec(n=8, max_new_tokens=48)))
    truth = oracle.oracle_labels(trees)
    right = [estimates[k].soft for k, (_, prefix_ok) in truth.items() if prefix_ok]
    wrong = [estimates[k].soft for k, (_, prefix_ok) in truth.items() if not prefix_ok]
    assert right and wrong
    # A wrong prefix rarely reaches the answer (a weak policy sometimes lands on it anyway); a
    # right one far more often. (Exact rates shift with torch's thread count, which other tests set.)
    assert sum(wrong) / len(wrong) < 0.25 and sum(wrong) / len(wrong) < 0.5 * sum(right) / len(right)


class CountingEstimator(PrefixEstimator):
    requested = 0

    def estimate(self, items):
        self.requested += len(items)
        return super().estimate(items)


def test_binary_search_finds_the_first_unreachable_prefix_with_few_estimates(trees, gen):
    spec = EstimatorSpec(n=8, max_new_tokens=48)
    solutions = [(t, leaf) for t in trees for leaf in t.terminals() if not leaf.truncated]
    counting = CountingEstimator(gen, spec)
    results = binary_search.first_errors(solutions, counting)
    # O(log steps): at most ceil(log2(steps)) prefix estimates per wrong solution, none for right ones.
    assert counting.requested <= sum(math.ceil(math.log2(len(tree.path(leaf)) - 1))
                                     for tree, leaf in solutions if not leaf.is_correct)

    # The same answer as a linear scan of every prefix's estimate, wherever values fall
    # monotonically along the path (the assumption binary search rests on).
    scanned = PrefixEstimator(gen, spec)
    hard = {k: e.hard for k, e in montecarlo.label_trees(trees, scanned).items()}
    results = binary_search.first_errors(solutions, scanned)  # reads the same estimates
    checked = 0
    for (tree, leaf), r in zip(solutions, results):
        assert r.step_ids == [n.node_id for n in tree.path(leaf)[1:]]
        if leaf.is_correct:
            assert r.first_error is None and r.cost_tokens == 0
            assert [row["value"] for row in binary_search.label_rows([r])] == [1.0] * len(r.step_ids)
            continue
        values = [hard[s] for s in r.step_ids]
        if values == sorted(values, reverse=True):
            assert r.first_error == values.index(0.0)
            checked += 1
        # Steps before the first error positive, it negative, the rest unlabeled.
        assert [row["value"] for row in binary_search.label_rows([r])] == [1.0] * r.first_error + [0.0]
    assert checked >= 5


def test_oracle_labels_step_and_prefix_correctness():
    p = generate_problems(1, seed=1, spec=EASY_ARITH)[0]
    tree = Tree("t", p, policy_prompt(p.problem), LINE, 6)
    good = p.reference_solution.split("\n")
    a = tree.add_child(tree.root, Completion("1 + 1 = 3", 5, -1.0, "stop", stop_string="\n"))  # wrong step
    b = tree.add_child(a, Completion("3 + 1 = 4", 5, -1.0, "stop"))  # right given the wrong one before it
    c = tree.add_child(tree.root, Completion(good[0], 5, -1.0, "stop", stop_string="\n"))
    labels = oracle.oracle_labels([tree])
    assert labels[a.node_id] == (False, False)
    assert labels[b.node_id][1] is False  # after an error, never prefix-correct
    assert labels[c.node_id] == (True, True)
    rows = oracle.label_rows(labels)
    assert {(r["node_id"], r["kind"]) for r in rows} == {(n, k) for n in labels for k in ("hard", "prefix")}


def test_agreement_metrics_on_a_hand_checked_case():
    ref = {"a": True, "b": False, "c": True, "d": False}
    got = {"a": True, "b": False, "c": False, "d": True, "x": True}  # x is not in the reference
    s = step_agreement(got, ref)
    assert s["n_steps"] == 4 and s["accuracy"] == 0.5 and s["confusion"] == ((1, 1), (1, 1))
    assert s["negative_precision"] == 0.5 and s["negative_recall"] == 0.5 and s["kappa"] == 0.0
    assert step_agreement(ref, ref)["kappa"] == 1.0
    assert first_error(["a", "b", "c"], ref) == 1 and first_error(["a", "c"], ref) == -1
    assert first_error(["x", "a"], ref) is None
    # Two solutions with an error (one found), one without (called clean): F1 = 2*0.5*1/1.5.
    solutions = [["a", "b"], ["a", "d"], ["a", "c"]]
    ref2 = {"a": True, "b": False, "d": False, "c": True}
    got2 = {"a": True, "b": False, "d": True, "c": True}
    result = agreement(got2, ref2, solutions)
    assert result.first_error_accuracy_erroneous == 0.5 and result.first_error_accuracy_correct == 1.0
    assert result.first_error_f1 == pytest.approx(2 / 3) and result.n_solutions == 3
