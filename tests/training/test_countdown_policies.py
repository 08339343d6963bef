"""The Countdown models shipped with the package do what they are shipped for: the policy
computes every step it writes, its last one included, so that what search has to fix is its
choices; and the verifier, read as the factory's generative PRM, picks a right solution out
of the policy's samples far more often than a random pick.

The policy trained on reference solutions alone fails the first test: every solution it ever
saw ends on the target, so it wrote the target as its last step's result whatever the
numbers (`7 + 65 = 73`): 13% of its last steps were valid (README, "Practice walks")."""

import pytest

from qstar_dagster.evaluation.evaluate import (
    EvalSpec,
    policy_metrics,
    prm_metrics,
    sample,
    score_samples,
)
from qstar_dagster.generation.hf import TransformersGenerator
from qstar_dagster.tasks import countdown
from qstar_dagster.tasks.prompt_sets import builtin_problems
from qstar_dagster.training.prm import PRMScorer
from qstar_dagster.training.shipped import shipped_policy, shipped_verifier


@pytest.fixture(scope="module")
def sampled():
    policy = shipped_policy("countdown-train")
    return sample(TransformersGenerator(str(policy.path)), builtin_problems("countdown-test", n=40),
                  EvalSpec(ns=(8,), max_new_tokens=96))


def test_the_shipped_countdown_policy_computes_its_last_step(sampled):
    last = [0, 0]  # [valid, seen]: last steps of samples whose earlier steps were valid
    for s in sampled:
        for steps in s.steps:
            verdicts = countdown.oracle_steps(s.problem.problem, steps).verdicts
            valid = [v.correct or v.reason.startswith("valid, but") for v in verdicts]
            if len(valid) >= 2 and all(valid[:-1]):
                last = [last[0] + valid[-1], last[1] + 1]
    assert last[1] >= 100, last
    assert last[0] / last[1] >= 0.75, last


def test_the_shipped_countdown_verifier_picks_far_better_than_a_random_sample(sampled):
    verifier = shipped_verifier("countdown-train")
    assert verifier is not None and verifier.files["tokenizer.json"] == shipped_policy("countdown-train").files[
        "tokenizer.json"]
    scores = score_samples(PRMScorer(verifier.path, head="generative"), sampled)
    random_pick = policy_metrics(sampled, [8])[("random", 8)]
    best = prm_metrics(sampled, scores, [8])[("prm_best_of:min", 8)]
    assert best >= random_pick + 0.15, (best, random_pick)
