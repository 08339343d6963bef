"""Evaluation on a held-out prompt set: how good a policy is alone and with a PRM.

Per problem the policy writes one greedy solution and `max(ns)` samples; for each N the
first N samples are used (nested, so curves over N are comparable):

- `greedy`; `pass@N` (some sample right); `majority@N` (the most common answer);
- `prm_best_of_N:<agg>`: the answer of the sample the PRM rates highest, a solution's score
  being the `min`, `prod` or `last` of its step scores;
- `prm_vote@N`: answers weighted by the sum of their solutions' `min` scores.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from qstar_dagster.generation.base import Generator, SamplingParams
from qstar_dagster.spec import option
from qstar_dagster.tasks.domains import domain, votes_apply
from qstar_dagster.tasks.grading import answers_match
from qstar_dagster.tasks.problem import DEFAULT_PROMPT_TEMPLATE, Problem, policy_prompt
from qstar_dagster.tasks.steps import step_format

AGGREGATIONS = {"min": min, "prod": math.prod, "last": lambda s: s[-1]}


@dataclass(frozen=True)
class EvalSpec:
    ns: tuple[int, ...] = option((1, 2, 4, 8, 16), "sample counts N of the curves")
    temperature: float = option(0.7, "temperature of the samples")
    max_new_tokens: int = option(96, "tokens per solution")
    seed: int = option(0, "seed of the samples")


@dataclass
class Sampled:
    problem: Problem
    greedy_correct: bool
    answers: list[str | None]
    correct: list[bool]
    steps: list[list[str]]


def sample(gen: Generator, problems: Sequence[Problem], spec: EvalSpec,
           template: str = DEFAULT_PROMPT_TEMPLATE) -> list[Sampled]:
    prompts = [policy_prompt(p.problem, template) for p in problems]
    greedy = gen.generate(prompts, SamplingParams(n=1, temperature=0, max_new_tokens=spec.max_new_tokens))
    samples = gen.generate(prompts, SamplingParams(n=max(spec.ns), temperature=spec.temperature,
                                                   max_new_tokens=spec.max_new_tokens, seed=spec.seed))
    out = []
    for p, [g], cs in zip(problems, greedy, samples):
        grade = domain(p.domain).grade
        graded = [grade(p, c.text) for c in cs]
        out.append(Sampled(p, grade(p, g.text)[1], [a for a, _ in graded], [ok for _, ok in graded],
                           [step_format(p.domain).split(c.text) for c in cs]))
    return out



def evaluate_policy(gen: Generator, problems: Sequence[Problem], k: int = 8, seed: int = 0,
                    max_new_tokens: int = 96, template: str = DEFAULT_PROMPT_TEMPLATE,
                    temperature: float = 0.7) -> dict:
    """Greedy accuracy, pass@k and majority@k (k samples at `temperature`; majority None
    where votes do not apply) on `problems`: the figures every policy checkpoint records
    (base_policy, rft_policy, dpo_policy)."""
    spec = EvalSpec(ns=(k,), temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    m = policy_metrics(sample(gen, problems, spec, template), [k])
    return {"greedy": m[("greedy", 1)], f"pass_at_{k}": m[("pass", k)], f"majority_at_{k}": m.get(("majority", k)),
            "n": len(problems)}


def _vote(answers: Sequence[str | None], weights: Sequence[float]) -> str | None:
    tally: dict[str, float] = defaultdict(float)
    for a, w in zip(answers, weights):
        if a is not None:
            tally[a] += w
    return max(tally, key=tally.get) if tally else None


def policy_metrics(sampled: Sequence[Sampled], ns: Sequence[int]) -> dict[tuple[str, int], float]:
    """(method, N) -> accuracy for the methods that need no PRM."""
    n_problems = len(sampled)
    out = {("greedy", 1): sum(s.greedy_correct for s in sampled) / n_problems}
    voting = votes_apply([s.problem for s in sampled])
    for n in ns:
        out[("pass", n)] = sum(any(s.correct[:n]) for s in sampled) / n_problems
        # what a pick with no information gets: the reference any selector must beat
        out[("random", n)] = sum(sum(s.correct[:n]) / len(s.correct[:n]) for s in sampled) / n_problems
        if not voting:
            continue
        majority = 0
        for s in sampled:
            votes = Counter(a for a in s.answers[:n] if a is not None)
            majority += bool(votes) and answers_match(votes.most_common(1)[0][0], s.problem.reference_answer)
        out[("majority", n)] = majority / n_problems
    return out


def prm_metrics(sampled: Sequence[Sampled], scores: Sequence[Sequence[Sequence[float]]],
                ns: Sequence[int]) -> dict[tuple[str, int], float]:
    """`scores[i][j]`: the PRM's step scores of problem i's sample j (empty: no steps)."""
    n_problems = len(sampled)
    out = {}
    voting = votes_apply([s.problem for s in sampled])
    for n in ns:
        for agg, f in AGGREGATIONS.items():
            right = 0
            for s, sc in zip(sampled, scores):
                values = [f(x) if x else 0.0 for x in sc[:n]]
                best = max(range(len(values)), key=values.__getitem__)
                right += s.correct[best]
            out[(f"prm_best_of:{agg}", n)] = right / n_problems
        if not voting:
            continue
        out[("prm_vote", n)] = vote_accuracy(sampled, scores, n)
    return out


# How a solution's `min` step score weighs in a PRM vote: its probability (the literature's
# weighted vote: Math-Shepherd, Snell et al.), or its log-odds, which adds the samples'
# evidence as independent votes would (a sample the PRM thinks wrong counts against its answer)
VOTE_WEIGHTS = {"prob": lambda p: p,
                "logodds": lambda p: math.log(max(p, 1e-6)) - math.log(max(1 - p, 1e-6))}


def vote_accuracy(sampled: Sequence[Sampled], scores: Sequence[Sequence[Sequence[float]]], n: int,
                  weight: str = "prob") -> float:
    """PRM-weighted voting over the first `n` samples: each answer gets the sum of its
    solutions' weights (`VOTE_WEIGHTS[weight]` of the `min` step score); the top one is picked."""
    f, right = VOTE_WEIGHTS[weight], 0
    for s, sc in zip(sampled, scores):
        answer = _vote(s.answers[:n], [f(min(x)) if x else f(0.0) for x in sc[:n]])
        right += answer is not None and answers_match(answer, s.problem.reference_answer)
    return right / len(sampled)


def within_problem_signal(sampled: Sequence[Sampled], scores: Sequence[Sequence[Sequence[float]]]) -> dict:
    """Does the PRM tell one problem's right samples from its wrong ones? Over the problems
    with both: the mean of (mean `min` score of the right samples - that of the wrong ones),
    and how often it is positive. A PRM that learned only which problems are hard separates
    right from wrong across problems and scores ~0 here; best-of-N needs this one."""
    gaps = []
    for s, sc in zip(sampled, scores):
        values = [min(x) if x else 0.0 for x in sc]
        right = [v for v, ok in zip(values, s.correct) if ok]
        wrong = [v for v, ok in zip(values, s.correct) if not ok]
        if right and wrong:
            gaps.append(sum(right) / len(right) - sum(wrong) / len(wrong))
    return {"mixed_problems": len(gaps), "within_gap": sum(gaps) / len(gaps) if gaps else None,
            "within_positive": sum(g > 0 for g in gaps) / len(gaps) if gaps else None}


def score_samples(scorer, sampled: Sequence[Sampled]) -> list[list[list[float]]]:
    items = [(s.problem.problem, steps) for s in sampled for steps in s.steps if steps]
    flat = iter(scorer.score_batch(items))
    return [[next(flat) if steps else [] for steps in s.steps] for s in sampled]
