"""Benchmark: how far is a Countdown policy's choice of the next step from its written solutions'?

A written solution (`countdown.random_solution`) takes at every step a move drawn uniformly
among the legal moves that keep the target reachable. A policy that imitated them exactly
would put all its probability on such moves, so its likeliest move would always keep the
target in reach and greedy decoding would solve every problem. The training loss cannot say
how close a policy is: most of a solution's tokens follow from its choices (` = 4 (left: 4 7
8)`), so a large error on the few tokens that choose hides in the mean. This scores the
choices themselves. At every state along each problem's written solution, over every legal
move from it (the text `a op b =`), it reads the policy's probability of each and reports:

- the probability on the moves that keep the target in reach (exact imitation: 1), and on
  legal moves at all;
- how often the likeliest legal move keeps the target in reach (exact imitation: always);
- the written choice's negative log-likelihood against exact imitation's (the log of the
  number of moves that keep the target in reach): the excess is what imitation has left;

each beside a legal move drawn at random (the share of legal moves that keep the target in
reach; the log of the number of legal moves), the baseline a policy that learned the rules
but not the search would match.

First steps and all steps, on held-out problems and on a seeded draw of the problems the
policies learned on (as `bench/step_rl.py --fit`), beside each policy's greedy accuracy on
the same problems. Several policies side by side:

    python bench/choice_fit.py --models qstar_dagster/policies/countdown,/tmp/layers/... --problems 500

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from qstar_dagster.generation.hf import TransformersGenerator
from qstar_dagster.tasks import countdown
from qstar_dagster.tasks.problem import Problem, policy_prompt
from qstar_dagster.tasks.prompt_sets import builtin_problems
from qstar_dagster.tasks.steps import LINE
from qstar_dagster.training.base_policy import greedy_accuracy
from qstar_dagster.training.prm import token_logprobs
from qstar_dagster.training.sft import right_pad


@torch.no_grad()
def move_logprobs(model, tok, items: list[tuple[str, str]], batch: int = 256) -> list[float]:
    """log p(text | prefix) for each (prefix, text), the text's tokens only."""
    out: list[float] = []
    for i in range(0, len(items), batch):
        enc = [(tok(pre, add_special_tokens=False)["input_ids"], tok(txt, add_special_tokens=False)["input_ids"])
               for pre, txt in items[i: i + batch]]
        ids, mask = right_pad([a + b for a, b in enc], tok.pad_token_id)
        token_lp = token_logprobs(model(input_ids=ids, attention_mask=mask).logits, ids, [], None)
        out += [token_lp[r, len(a) - 1: len(a) + len(b) - 1].sum().item() for r, (a, b) in enumerate(enc)]
    return out


def choice_fit(model, tok, problems: list[Problem]) -> dict:
    """The figures above, for the first steps and for all steps of `problems`' written solutions."""
    rows, items = [], []
    for p in problems:
        start = countdown.parse_problem(p.problem)
        written = p.reference_solution.split(LINE.separator)
        prefix, numbers = policy_prompt(p.problem), start.numbers
        for depth, step in enumerate(written):  # walk the written solution: each state's legal moves
            moves = countdown.moves(numbers)
            keep = [start.target in countdown.reachable(left) for *_, left in moves]
            texts = [countdown.step_parts(*move)[0] + " =" for move in moves]  # `8 - 4 =`: the choice, as written
            chosen = texts.index(step.split(" =")[0] + " =")
            rows.append((depth, len(written), keep, chosen, len(items)))
            items += [(prefix, t) for t in texts]
            prefix, numbers = prefix + step + LINE.separator, moves[chosen][4]
    logps = move_logprobs(model, tok, items)

    def summary(selected):
        n = len(selected)
        if not n:
            return {}
        keep_mass = legal_mass = likeliest_keeps = nll = ideal = uniform_keep = uniform_nll = 0.0
        for _, _, keep, chosen, at in selected:
            lp = logps[at: at + len(keep)]
            probs = [math.exp(x) for x in lp]
            legal_mass += sum(probs)
            keep_mass += sum(q for q, k in zip(probs, keep) if k)
            likeliest_keeps += keep[max(range(len(lp)), key=lp.__getitem__)]
            nll -= lp[chosen]
            ideal += math.log(sum(keep))
            uniform_keep += sum(keep) / len(keep)  # a legal move drawn at random: the trivial baseline
            uniform_nll += math.log(len(keep))
        return {"states": n, "keep_mass": keep_mass / n, "legal_mass": legal_mass / n,
                "likeliest_keeps": likeliest_keeps / n, "written_nll": nll / n, "ideal_nll": ideal / n,
                "uniform_keep": uniform_keep / n, "uniform_nll": uniform_nll / n}

    return {"first": summary([r for r in rows if r[0] == 0]), "all": summary(rows),
            "first_3": summary([r for r in rows if r[0] == 0 and r[1] == 2]),
            "first_4": summary([r for r in rows if r[0] == 0 and r[1] == 3])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="qstar_dagster/policies/countdown", help="comma-separated policy directories")
    ap.add_argument("--problems", type=int, default=500, help="held-out problems (countdown-test), and as many of "
                                                              "countdown-train (a seeded draw, as step_rl.py --fit)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sets = {"held-out": builtin_problems("countdown-test", n=max(args.problems, 1000))[: args.problems],
            "training": random.Random(0).sample(builtin_problems("countdown-train"), args.problems)}
    results = {}
    for path in args.models.split(","):
        t0 = time.monotonic()
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        gen = TransformersGenerator(model, tok)
        results[path] = {name: {"greedy": greedy_accuracy(gen, ps), **choice_fit(model, tok, ps)}
                         for name, ps in sets.items()}
        results[path]["seconds"] = round(time.monotonic() - t0, 1)
    print(f"\n{'policy':<44}{'problems':>10}{'greedy':>8}{'in reach, 1st / all':>22}{'legal, all':>12}"
          f"{'likeliest in reach, 1st / all':>32}{'written NLL 1st, policy / exact':>34}")
    first = next(iter(results.values()))
    for name in sets:
        f = first[name]
        print(f"{'(a legal move at random)':<44}{name:>10}{'':>8}{f['first']['uniform_keep']:>13.1%} / "
              f"{f['all']['uniform_keep']:.1%}{'100.0%':>12}{f['first']['uniform_keep']:>23.1%} / "
              f"{f['all']['uniform_keep']:.1%}{f['first']['uniform_nll']:>25.3f} / {f['first']['ideal_nll']:.3f}")
    for path, r in results.items():
        for name in sets:
            f = r[name]
            print(f"{path[-43:]:<44}{name:>10}{f['greedy']:>8.1%}"
                  f"{f['first']['keep_mass']:>13.1%} / {f['all']['keep_mass']:.1%}{f['all']['legal_mass']:>12.1%}"
                  f"{f['first']['likeliest_keeps']:>23.1%} / {f['all']['likeliest_keeps']:.1%}"
                  f"{f['first']['written_nll']:>25.3f} / {f['first']['ideal_nll']:.3f}")
    print(json.dumps({"bench": "choice_fit", "machine": platform.machine(), "threads": args.threads,
                      "problems": args.problems, "results": results}))


if __name__ == "__main__":
    main()
