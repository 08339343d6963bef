"""The PRM must verify, not only learn which problems are hard: trained on oracle labels of a
small policy's own search trees, it ranks the right next step above the wrong one on the
rows it learned from, and on held-out problems its best-of-8 beats a sample picked at random.

Both fail on the earlier design (the one-logit classifier head at the step's separator,
lr 1e-3, every labeled step of every path): `SPEC = OLD_DESIGN` below makes them fail (see
README, "A PRM that verifies")."""

import pytest

from qstar_dagster.datasets.build import prm_rows
from qstar_dagster.evaluation.evaluate import (
    EvalSpec,
    prm_metrics,
    sample,
    score_samples,
    within_problem_signal,
)
from qstar_dagster.generation.hf import TransformersGenerator
from qstar_dagster.labeling.oracle import oracle_labels
from qstar_dagster.search.algorithms import SearchSpec, search
from qstar_dagster.search.tree import Tree
from qstar_dagster.search.value import NoValue
from qstar_dagster.tasks.arith import generate_problems
from qstar_dagster.tasks.problem import policy_prompt
from qstar_dagster.tasks.steps import LINE
from qstar_dagster.training.prm import PRMScorer, PRMTrainSpec, evaluate_prm, train_prm

from ..conftest import EASY_ARITH

OLD_DESIGN = PRMTrainSpec(head="classifier", epochs=3.0, lr=1e-3, stop_at_first_error=False, once_per_step=False, batch_size=16)
SPEC = PRMTrainSpec(batch_size=16)  # the default design
SEARCH = SearchSpec(algorithm="beam", k=4, beam_width=4, value="none")


def beam_trees(gen, problems, tag):
    trees = [Tree(f"{tag}{i}", p, policy_prompt(p.problem), LINE, SEARCH.max_depth) for i, p in enumerate(problems)]
    return search(trees, SEARCH, gen, NoValue(), seed=0)[0]


@pytest.fixture(scope="module")
def trained(arith_policy_dir, tmp_path_factory):
    gen = TransformersGenerator(str(arith_policy_dir))
    trees = beam_trees(gen, generate_problems(120, seed=21, spec=EASY_ARITH), "train")
    truth = oracle_labels(trees)
    rows = prm_rows(trees, {n: prefix_ok for n, (_, prefix_ok) in truth.items()}, {})
    out = tmp_path_factory.mktemp("prm")
    train_prm(arith_policy_dir, rows, out, SPEC)
    return gen, trees, PRMScorer(out)


def test_the_prm_fits_the_siblings_it_learned_from(trained):
    _, trees, scorer = trained
    fit = evaluate_prm(scorer, trees)
    assert fit["sibling_pairs"] >= 50, fit  # enough right/wrong siblings for the figure to mean something
    assert fit["sibling_accuracy"] >= 0.75, fit


def test_the_prm_picks_better_than_a_random_sample_on_held_out_problems(trained):
    gen, _, scorer = trained
    held_out = generate_problems(100, seed=22, spec=EASY_ARITH)
    sampled = sample(gen, held_out, EvalSpec(ns=(8,)))
    scores = score_samples(scorer, sampled)
    random_pick = sum(sum(s.correct) / len(s.correct) for s in sampled) / len(sampled)
    best = prm_metrics(sampled, scores, [8])[("prm_best_of:min", 8)]
    signal = within_problem_signal(sampled, scores)
    assert signal["mixed_problems"] >= 20, signal
    assert best >= random_pick + 0.05, (best, random_pick, signal)
    assert signal["within_gap"] > 0 and signal["within_positive"] >= 0.6, signal
