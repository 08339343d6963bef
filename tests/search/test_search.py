"""Search over reasoning steps with a real (small, trained) policy on the built-in domain."""

import math

import pytest

from qstar_dagster.generation.base import Completion
from qstar_dagster.generation.hf import TransformersGenerator
from qstar_dagster.search.algorithms import SearchSpec, search
from qstar_dagster.search.rollouts import plan_rollout
from qstar_dagster.search.tree import Tree, check_tree
from qstar_dagster.search.value import (
    LikelihoodValue,
    MonteCarloValue,
    NoValue,
    PRMValue,
    make_value_function,
)
from qstar_dagster.tasks.arith import generate_problems
from qstar_dagster.tasks.problem import policy_prompt
from qstar_dagster.tasks.prompt_sets import builtin_problems
from qstar_dagster.tasks.steps import LINE
from qstar_dagster.training.shipped import shipped_policy

from ..conftest import EASY_ARITH


class CountingGenerator:
    """The real generator, with a record of how many prompts each call carried."""

    def __init__(self, inner):
        self.inner, self.name, self.calls = inner, inner.name, []

    def generate(self, prompts, params):
        self.calls.append(len(prompts))
        return self.inner.generate(prompts, params)


@pytest.fixture(scope="module")
def gen(arith_policy_dir):
    return TransformersGenerator(str(arith_policy_dir))


@pytest.fixture(scope="module")
def problems():
    return generate_problems(12, seed=99, spec=EASY_ARITH)


def make_trees(problems, spec, tag=""):
    return [Tree(f"t{tag}{i}", p, policy_prompt(p.problem), LINE, spec.max_depth) for i, p in enumerate(problems)]


def run(problems, spec, gen, value=None):
    counting = CountingGenerator(gen)
    value = value or make_value_function(spec.value, counting, spec.mc_rollouts)
    trees, stats = search(make_trees(problems, spec), spec, counting, value)
    return trees, stats, counting.calls


SPECS = {
    "best_of_n": SearchSpec(algorithm="best_of_n", n=6, value="none"),
    "beam": SearchSpec(algorithm="beam", k=3, beam_width=2, value="likelihood"),
    "mcts": SearchSpec(algorithm="mcts", simulations=8, value="likelihood"),
}


@pytest.mark.parametrize("algorithm", SPECS)
def test_each_algorithm_makes_sound_trees_within_budget_and_finds_answers(algorithm, problems, gen):
    spec = SPECS[algorithm]
    trees, stats, calls = run(problems, spec, gen)
    for t in trees:
        assert check_tree(t) == [], check_tree(t)
        assert len(t.nodes) <= spec.max_nodes and t.generated_tokens <= spec.max_tokens
        for n in t.terminals():
            assert n.is_correct is not None  # graded against the reference
            assert n.is_correct == (n.answer == t.problem.reference_answer)
        leaf = t.selected_leaf()
        assert leaf is not None and leaf.is_terminal and all(n.selected for n in t.path(leaf))
    assert stats.generated_tokens == sum(t.generated_tokens for t in trees) > 0
    # The trained policy solves some of these; search finds a right path for most.
    solved = sum(any(n.is_correct for n in t.terminals()) for t in trees)
    assert solved >= len(trees) // 2, solved
    # Batched across problems: the first call carries every problem's root.
    assert calls[0] == len(problems)
    assert len(calls) <= {"best_of_n": spec.max_depth + 1, "beam": spec.max_depth,
                          "mcts": spec.simulations}[algorithm]


def test_best_of_n_is_n_chains_from_the_root(problems, gen):
    spec = SPECS["best_of_n"]
    trees, _, _ = run(problems[:4], spec, gen)
    for t in trees:
        assert len(t.root.children) == spec.n
        assert all(len(n.children) <= 1 for n in t.nodes.values() if n is not t.root)
        assert len(t.leaves()) == spec.n


def test_beam_keeps_at_most_beam_width_open_nodes_per_depth(problems, gen):
    spec = SPECS["beam"]
    trees, _, _ = run(problems[:6], spec, gen)
    for t in trees:
        expanded = [n for n in t.nodes.values() if n.children]
        assert all(len(n.children) == spec.k for n in expanded)
        for depth in {n.depth for n in expanded}:
            assert len([n for n in expanded if n.depth == depth]) <= (1 if depth == 0 else spec.beam_width)
        # Kept nodes are the best-valued open ones of their depth.
        for depth in {n.depth for n in expanded if n.depth > 0}:
            level = [n for n in t.nodes.values() if n.depth == depth and not n.is_terminal]
            kept = [n for n in level if n.children]
            dropped = [n for n in level if not n.children]
            assert min(n.value for n in kept) >= max((n.value for n in dropped), default=-1)


def test_mcts_backs_up_visits_and_values(problems, gen):
    spec = SPECS["mcts"]
    trees, _, _ = run(problems[:6], spec, gen)
    for t in trees:
        assert t.root.visits == spec.simulations
        for n in t.nodes.values():
            if n.children:  # visited once as a leaf (when expanded), then through its children
                assert n.visits == 1 + sum(t.nodes[c].visits for c in n.children)
                assert math.isclose(sum(t.nodes[c].prior for c in n.children), 1.0)
            if n.visits:
                assert 0.0 <= n.value_sum / n.visits <= 1.0


@pytest.mark.parametrize("algorithm", SPECS)
def test_tight_budgets_are_never_exceeded(algorithm, problems, gen):
    spec = SearchSpec(**{**SPECS[algorithm].__dict__, "max_nodes": 9, "max_tokens": 120, "step_max_tokens": 20})
    trees, _, _ = run(problems[:6], spec, gen)
    for t in trees:
        assert len(t.nodes) <= 9 and t.generated_tokens <= 120
        assert check_tree(t) == []


@pytest.mark.parametrize("algorithm", SPECS)
def test_same_seed_same_trees_other_seed_other_trees(algorithm, problems, gen):
    spec = SPECS[algorithm]

    def texts(seed):
        trees, _ = search(make_trees(problems[:4], spec), spec, gen,
                          make_value_function(spec.value, gen), seed=seed)
        return [[(n.node_id, n.text, n.value) for n in t.nodes.values()] for t in trees]

    assert texts(1) == texts(1)
    assert texts(1) != texts(2)


def test_likelihood_value_is_the_geometric_mean_token_probability(problems):
    tree = make_trees(problems[:1], SearchSpec())[0]
    a = tree.add_child(tree.root, Completion("3 + 4 = 7", 10, -2.0, "stop", stop_string="\n"))
    b = tree.add_child(a, Completion("7 - 1 = 6", 10, -3.0, "stop", stop_string="\n"))
    assert LikelihoodValue()([(tree, b)], seed=0) == [pytest.approx(math.exp(-5.0 / 20))]


class StepScores:
    """A PRM whose step scores are given by hand: the score of a step is looked up by its text."""

    def __init__(self, scores):
        self.scores, self.calls = scores, []

    def score_batch(self, items):
        self.calls.append(items)
        return [[self.scores[s] for s in steps] for _, steps in items]


def test_an_unset_beam_width_is_the_domains_and_is_recorded_as_if_set(problems):
    hands = builtin_problems("game24")[:3]
    for some, width in ((problems, 4), (hands, 8)):
        plan = plan_rollout("set", "v1", some, None, SearchSpec())
        assert plan.spec.beam_width == width  # the trees' stored spec says which
        # the same rollout as the width written out (arithmetic's ids are those from before the default)
        assert plan.rollout_id == plan_rollout("set", "v1", some, None, SearchSpec(beam_width=width)).rollout_id
        assert plan.rollout_id != plan_rollout("set", "v1", some, None, SearchSpec(beam_width=width + 1)).rollout_id
    with pytest.raises(ValueError, match="beam_width"):
        SearchSpec(beam_width=0)


def test_countdown_beam_keeps_eight_open_nodes_where_the_budget_allows():
    """Four numbers take three steps: 4 x 8 fills 53 of the 64 nodes, 4 x 4 only 37."""
    gen = TransformersGenerator(str(shipped_policy("countdown-train").path))
    spec = SearchSpec(value="none")  # keeps the first 8 open children
    trees = make_trees(builtin_problems("game24")[:4], spec)
    search(trees, spec, gen, NoValue())
    widths = []
    for t in trees:
        assert len(t.nodes) <= spec.max_nodes and check_tree(t) == []
        widths.append(len([n for n in t.nodes.values() if n.depth == 2 and n.children]))
    assert max(widths) > 4 and all(w <= 8 for w in widths), widths


def test_prm_value_reads_the_step_scores_by_min_last_or_product(problems):
    tree = make_trees(problems[:1], SearchSpec())[0]
    a = tree.add_child(tree.root, Completion("3 + 4 = 7", 10, -2.0, "stop", stop_string="\n"))
    b = tree.add_child(a, Completion("7 - 1 = 6", 10, -3.0, "stop", stop_string="\n"))
    scorer = StepScores({"3 + 4 = 7": 0.5, "7 - 1 = 6": 0.8})
    items = [(tree, b), (tree, a), (tree, tree.root)]
    assert PRMValue(scorer)(items, seed=0) == [0.5, 0.5, 1.0]  # the root has no steps: nothing to doubt
    assert PRMValue(scorer, "last")(items, seed=0) == [0.8, 0.5, 1.0]
    assert PRMValue(scorer, "prod")(items, seed=0) == [pytest.approx(0.4), 0.5, 1.0]
    assert scorer.calls[0] == [(problems[0].problem, ["3 + 4 = 7", "7 - 1 = 6"]), (problems[0].problem, ["3 + 4 = 7"])]
    with pytest.raises(ValueError, match="min, last, prod"):
        PRMValue(scorer, "mean")


def test_monte_carlo_value_scores_terminals_by_correctness_and_never_picks_answers(problems, gen):
    p = problems[0]
    tree = make_trees([p], SearchSpec())[0]
    steps = p.reference_solution.split("\n")
    node = tree.root
    for s in steps[:-1]:
        node = tree.add_child(node, Completion(s, 8, -1.0, "stop", stop_string="\n"))
    right = tree.add_child(node, Completion(steps[-1], 8, -1.0, "stop"))  # end of sequence: terminal
    wrong = tree.add_child(node, Completion("The answer is 100000", 8, -0.5, "stop"))
    assert right.is_terminal and right.is_correct and wrong.is_terminal and not wrong.is_correct
    mc = MonteCarloValue(gen, rollouts=4, max_new_tokens=48)
    values = mc([(tree, right), (tree, wrong), (tree, tree.root)], seed=0)
    assert values[:2] == [1.0, 0.0]
    assert 0.0 <= values[2] <= 1.0 and tree.value_tokens > 0  # the root's 4 rollouts were spent here
    assert mc.uses_reference and not LikelihoodValue().uses_reference and not NoValue().uses_reference


def test_a_step_ends_at_the_separator_and_a_solution_at_end_of_sequence(problems):
    tree = make_trees(problems[:1], SearchSpec(max_depth=2))[0]
    step = tree.add_child(tree.root, Completion("2 + 3 = 5", 6, -1.0, "stop", stop_string="\n"))
    assert not step.is_terminal and step.answer is None
    cut = tree.add_child(tree.root, Completion("2 + 3 = 5", 48, -1.0, "length"))
    assert cut.is_terminal and cut.truncated  # the step's token budget ran out
    deep = tree.add_child(step, Completion("5 * 2 = 10", 6, -1.0, "stop", stop_string="\n"))
    assert deep.is_terminal and deep.truncated and deep.answer == "10"  # the depth limit
    assert tree.solution_until(deep) == "2 + 3 = 5\n5 * 2 = 10"
    assert check_tree(tree) == []
    deep.children.append("nope")
    assert any("terminal with children" in v for v in check_tree(tree))


def test_k_defaults_per_algorithm_and_the_default_is_part_of_the_config():
    assert SearchSpec(algorithm="beam").k == 4 and SearchSpec(algorithm="mcts").k == 2
    assert SearchSpec(algorithm="mcts") == SearchSpec(algorithm="mcts", k=2) != SearchSpec(algorithm="mcts", k=3)


def test_unknown_algorithm_or_value_function_is_refused():
    with pytest.raises(ValueError, match="search algorithm must be one of"):
        SearchSpec(algorithm="dfs")
    with pytest.raises(ValueError, match="value function must be one of"):
        SearchSpec(value="oracle")
    with pytest.raises(ValueError, match="max_nodes >= 2"):
        SearchSpec(max_nodes=1)
