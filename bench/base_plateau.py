"""Benchmark: where does the built-in policy's training plateau, per domain setting?

Issue 16 asks for shipped base policies trained to a plateau (1,000 further steps of the same
training gain under 2 points of greedy accuracy) on domain settings where that plateau
leaves room: greedy 30-70%, pass@8 at least 20 points above greedy, and on Countdown at least
80% of the sampled steps valid. For each setting this trains the built-in policy once per
schedule in --steps (same seed and data; each a full warm-up + cosine schedule, so "1,000
further steps" is a schedule 1,000 steps longer, not more steps at a decayed rate) and
measures every policy on the same 200 held-out problems, side by side:

    python bench/base_plateau.py --settings "arith:max_operand=99,max_multiplier=9;countdown:3:1-20:10-99" \
        --steps 2000,3000

A setting is `arith:<ArithSpec field>=<value>,...` (none: the defaults) or
`countdown:n:min-max:target_min-target_max`. A schedule whose policy is already in --save (with
its training.json) is measured again, not retrained, so a longer schedule can be added later.
`--references N` trains on the reference solutions of the first N training problems only (the
held-out problems stay outside all of them), as for a real policy that has seen few written
solutions of a task whose problems and checker are plentiful.
`--extra 4:1-13:10-99=15000` adds the reference solutions of that many more problems of a
Countdown spec, outside the training set, the held-out draw (at least its first 1,000, which
hold the built-in `countdown-test`) and `game24`: a verifier may read more than the policy,
because written solutions of a checkable task are cheap ("Countdown defaults" in the README).
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from countdown import measure as countdown_measure
from countdown import parse_shapes, parse_spec, setting_problems

from qstar_dagster.evaluation.evaluate import EvalSpec, policy_metrics, sample
from qstar_dagster.generation.hf import TransformersGenerator
from qstar_dagster.tasks import arith, countdown
from qstar_dagster.tasks.prompt_sets import builtin_problems
from qstar_dagster.training.base_policy import BasePolicyConfig, greedy_accuracy, train_base_policy


def arith_spec(text: str) -> arith.ArithSpec:
    """"max_operand=99,max_multiplier=9" -> ArithSpec(max_operand=99, max_multiplier=9)."""
    fields = {f.name: f.type for f in dataclasses.fields(arith.ArithSpec)}
    kwargs = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        if key not in fields or key == "operators":
            raise SystemExit(f"--settings: {key!r} is not an integer ArithSpec field; fields: "
                             f"{', '.join(k for k in fields if k != 'operators')}")
        kwargs[key] = value.lower() == "true" if fields[key] in (bool, "bool") else int(value)
    return arith.ArithSpec(**kwargs)


def problems_of(setting: str, n_test: int) -> tuple[list, list]:
    """(training problems, held-out problems) of one setting: the built-in training set as it
    would be with this setting as the domain's default (same size, seed and generator, so the
    longest schedule's policy is the one the `base_policy` asset would train), and held-out
    problems outside it (and outside game24)."""
    kind, _, rest = setting.partition(":")
    if kind == "arith":
        spec = arith_spec(rest)
        train = builtin_problems("arith-train", spec=spec)
        held = {p.problem for p in train}
        test = [p for p in arith.generate_problems(4 * n_test, seed=2, spec=spec) if p.problem not in held]
        return train, test[:n_test]
    if kind == "countdown":
        spec = parse_spec(rest)
        game24 = frozenset(p.problem for p in builtin_problems("game24"))
        try:
            train = builtin_problems("countdown-train", spec=spec)
        except ValueError:  # a small setting: all of its problems, repeated along training
            every = setting_problems(spec, 10**9, game24)
            return every[n_test:], every[:n_test]
        taken = game24 | {p.problem for p in train}
        return train, countdown.generate_problems(n_test, seed=12, spec=spec, exclude=taken)
    raise SystemExit(f"--settings entry {setting!r}: start it with arith: or countdown:")


def extra_problems(extra: str, setting: str, n_held: int) -> list:
    """--extra SPEC=N: N problems of SPEC, none of them in the setting's training set (all of
    it, whatever --references keeps), in its first n_held held-out problems, or in game24."""
    text, _, n = extra.partition("=")
    if not setting.startswith("countdown") or not n.isdigit():
        raise SystemExit(f"--extra {extra!r}: write SPEC=N, e.g. 4:1-13:10-99=15000, with a countdown setting")
    train, held_out = problems_of(setting, n_held)
    taken = frozenset(p.problem for p in [*builtin_problems("game24"), *train, *held_out])
    return countdown.generate_problems(int(n), seed=13, spec=parse_spec(text), exclude=taken)


def measure(setting: str, path: Path, held_out: list) -> dict:
    gen = TransformersGenerator(str(path))
    if setting.startswith("countdown"):
        # the beam columns stay at 4x4, the shape the README's plateau figures were taken at,
        # whatever the domain's default width becomes (it is 8 for Countdown since 7 December)
        return countdown_measure(gen, held_out, shapes=parse_shapes("4x4"))
    # room for the longest reference solution: with multipliers to 99 about 1% run past 96 characters
    longest = max(len(p.reference_solution) for p in held_out)
    sampled = sample(gen, held_out, EvalSpec(ns=(8,), max_new_tokens=max(96, longest + 8)))
    m, n = policy_metrics(sampled, [8]), len(sampled)
    return {"problems": n, "greedy": m[("greedy", 1)], "pass_at_8": m[("pass", 8)],
            "majority_at_8": m[("majority", 8)],
            "random_sample": sum(sum(s.correct) / len(s.correct) for s in sampled) / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--settings", default="arith:", help="';'-separated domain settings (see the docstring)")
    ap.add_argument("--steps", default="2000,3000", help="comma-separated schedules, shortest first")
    ap.add_argument("--hidden", type=int, default=BasePolicyConfig().hidden)
    ap.add_argument("--layers", type=int, default=BasePolicyConfig().layers)
    ap.add_argument("--heads", type=int, default=BasePolicyConfig().heads)
    ap.add_argument("--lr", type=float, default=BasePolicyConfig().lr)
    ap.add_argument("--practice", type=float, default=BasePolicyConfig().practice,
                    help="practice walks per training problem (Countdown; see BasePolicyConfig)")
    ap.add_argument("--problems", type=int, default=200, help="held-out problems per setting")
    ap.add_argument("--save", default="/tmp/plateau", help="where trained policies go")
    ap.add_argument("--references", type=int, default=0,
                    help="train on the reference solutions of the first N training problems only (0: all), as when "
                         "written solutions are scarce and problems with a checker are not")
    ap.add_argument("--extra", default="", help="SPEC=N: the reference solutions of N more Countdown problems of SPEC "
                         "(n:min-max:target_min-target_max), outside training, held-out and game24 (e.g. for a verifier)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--curve-every", type=int, default=250, help="steps between greedy points (100 problems) in the log")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    schedules = [int(s) for s in args.steps.split(",")]
    cfg = BasePolicyConfig(hidden=args.hidden, layers=args.layers, heads=args.heads, lr=args.lr,
                           eval_every=args.curve_every, practice=args.practice, references=args.references)
    # another size trains into another directory (the default size keeps the names earlier runs saved)
    size = (cfg.hidden, cfg.layers, cfg.heads)
    d = BasePolicyConfig()
    size_tag = "" if size == (d.hidden, d.layers, d.heads) else "-h{}l{}a{}".format(*size)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    runs: dict[str, dict] = {}
    for setting in filter(None, (s.strip() for s in args.settings.split(";"))):
        train, held_out = problems_of(setting, args.problems)
        train = cfg.problems(train)
        kind = setting.partition(":")[0]  # practice walks are Countdown's
        if args.extra:
            train = train + extra_problems(args.extra, setting, max(args.problems, 1000))
        runs[setting] = {"train_problems": len(train), "schedules": {}}

        def on_eval(model, tok, curve_problems=held_out[:100]) -> float:
            return greedy_accuracy(TransformersGenerator(model, tok), curve_problems)

        for steps in sorted(schedules, reverse=True):  # the longest first: it is the candidate to ship
            path = Path(args.save) / (f"{setting.replace(':', '_').replace(',', '_')}-{steps}"
                                      + (f"-practice{cfg.practice:g}" if cfg.practice and kind == "countdown" else "")
                                      + size_tag + (f"-ref{args.references}" if args.references else "")
                                      + (f"-extra{args.extra.replace(':', '_').replace('=', 'x')}" if args.extra else ""))
            saved = path / "training.json"  # the trainer's summary beside the weights, as in a checkpoint
            if saved.is_file() and (path / "model.safetensors").is_file():  # trained by an earlier run: measure it
                summary = json.loads(saved.read_text())
                print(f"{setting} {steps} steps: reusing {path} (trained by an earlier run)", flush=True)
            else:
                summary = train_base_policy(train, path, dataclasses.replace(cfg, steps=steps), on_eval=on_eval)
                saved.write_text(json.dumps(summary))
            figures = measure(setting, path, held_out)
            runs[setting]["schedules"][steps] = {"final_loss": round(summary["final_loss"], 4),
                                                 "seconds": round(summary["train_seconds"], 1),
                                                 "curve": summary["accuracy_curve"], **figures}
            print(f"{setting} {steps} steps: loss {summary['final_loss']:.3f}, greedy {figures['greedy']:.1%}, "
                  f"pass@8 {figures['pass_at_8']:.1%} ({summary['train_seconds']:.0f}s)", flush=True)
        done = runs[setting]["schedules"]
        last, before = done[schedules[-1]], done[schedules[-2]] if len(schedules) > 1 else None
        runs[setting]["plateau"] = before is not None and last["greedy"] - before["greedy"] < 0.02
        runs[setting]["gain_of_longest"] = None if before is None else round(last["greedy"] - before["greedy"], 3)

    columns = [(s, n) for s in runs for n in schedules]
    print("".ljust(26) + "".join(f"{s[:22]:>24}" for s, _ in columns))
    print("".ljust(26) + "".join(f"{f'{n} steps':>24}" for _, n in columns))
    for label, key in [("greedy", "greedy"), ("pass@8", "pass_at_8"), ("majority@8", "majority_at_8"),
                       ("a random sample", "random_sample"), ("sampled steps valid", "valid_steps"),
                       ("valid, target in reach", "solvable_of_valid")]:
        cells = [runs[s]["schedules"][n].get(key) for s, n in columns]
        if any(c is not None for c in cells):
            print(f"{label:26}" + "".join(f"{'–' if c is None else f'{c:.1%}':>24}" for c in cells))
    for label, key in [("beam 4x4, likelihood", "beam_likelihood"), ("beam 4x4, oracle", "beam_oracle")]:
        cells = [(runs[s]["schedules"][n].get(key) or {}).get("selected") for s, n in columns]
        if any(c is not None for c in cells):
            print(f"{label:26}" + "".join(f"{'–' if c is None else f'{c:.1%}':>24}" for c in cells))
    print(f"{'final loss':26}" + "".join(f"{runs[s]['schedules'][n]['final_loss']:>24}" for s, n in columns))
    print(f"{'train seconds':26}" + "".join(f"{runs[s]['schedules'][n]['seconds']:>24}" for s, n in columns))
    for s, r in runs.items():
        print(f"{s}: {r['train_problems']} training problems; " + (
            "one schedule: no plateau test (give two, e.g. --steps S,S+1000)" if r["gain_of_longest"] is None
            else f"the longest schedule gains {r['gain_of_longest']} greedy -> "
                 f"{'plateau' if r['plateau'] else 'not at a plateau'}"))
    print(json.dumps({"bench": "base_plateau", "machine": platform.machine(), "threads": args.threads,
                      "model": {"hidden": cfg.hidden, "layers": cfg.layers, "heads": cfg.heads, "lr": cfg.lr,
                                "practice": cfg.practice}, "references": args.references or None,
                      "extra": args.extra or None,
                      "runs": runs}))


if __name__ == "__main__":
    main()
