"""The evaluation metrics on hand-checked cases."""

import pytest

from qstar_dagster.evaluation.evaluate import Sampled, policy_metrics, prm_metrics
from qstar_dagster.tasks.problem import Problem


def sampled(answers, reference="7", greedy=False):
    p = Problem("q", reference, domain="arith")
    return Sampled(p, greedy, answers, [a == reference for a in answers], [["s"]] * len(answers))


def test_pass_majority_and_greedy():
    s = [sampled(["1", "7", "1", "7", "7"], greedy=True), sampled(["2", "2", "3", None, "7"])]
    m = policy_metrics(s, [1, 2, 4])
    assert m[("greedy", 1)] == 0.5
    assert m[("pass", 1)] == 0.0 and m[("pass", 2)] == 0.5 and m[("pass", 4)] == 0.5
    # first 4 answers: problem 1 ties 1 and 7 (the first counted wins: 1); problem 2 majority 2.
    assert m[("majority", 4)] == 0.0
    assert policy_metrics(s, [5])[("majority", 5)] == 0.5
    # a random pick: problem 1 right in 2 of its first 4, problem 2 in none; of 5: 3/5 and 1/5
    assert m[("random", 4)] == 0.25 and m[("random", 1)] == 0.0
    assert policy_metrics(s, [5])[("random", 5)] == pytest.approx(0.4)


def test_prm_best_of_n_and_weighted_vote_follow_the_scores():
    s = [sampled(["1", "7", "1"]), sampled(["7", "3", "3"])]
    scores = [
        [[0.9, 0.2], [0.6, 0.7], [0.8, 0.1]],  # min: .2 .6 .1 -> sample 2 (right); last: .2 .7 .1 -> 2; prod: .18 .42 .08
        [[0.5, 0.5], [0.9, 0.9], [0.2, 0.9]],  # min: .5 .9 .2 -> sample 2 (wrong); last: .5 .9 .9 -> sample 2 (wrong)
    ]
    m = prm_metrics(s, scores, [3])
    assert m[("prm_best_of:min", 3)] == 0.5 and m[("prm_best_of:prod", 3)] == 0.5 and m[("prm_best_of:last", 3)] == 0.5
    # vote by min score: problem 1: "1" .3, "7" .6 -> right; problem 2: "7" .5, "3" 1.1 -> wrong
    assert m[("prm_vote", 3)] == 0.5
    assert prm_metrics(s, scores, [1])[("prm_best_of:min", 1)] == pytest.approx(0.5)  # only the first sample
