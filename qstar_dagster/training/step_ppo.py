"""Step-level RL: PPO on a policy's own samples with a reward per reasoning step.

Each iteration samples a group of solutions per training problem with the current policy,
cuts each into steps (the domain's step format), scores every step (a PRM, Monte Carlo
values, or the domain's oracle), adds the outcome (the domain's grade) at the solution's
end, turns the rewards into per-token advantages by one of three credit assignments, and
takes a few epochs of PPO's clipped objective with a KL penalty against the starting policy.

Credit assignment (`credit`):

- `step`: each step's tokens see only that step's reward. A step is its own episode:
  every token of it gets the step's whole reward minus a baseline, and nothing bootstraps
  from later steps, so a right step is not blamed for a later slip and a wrong step stays
  punished when the answer comes out right (BACKGROUND.md, step-level PPO). The baseline is
  a value head predicting the step's reward from inside it (`baseline: critic`) or the
  group's steps at the same depth (`baseline: group`, no critic).
- `gae`: each step's reward sits on its last token, and token-level GAE runs across the
  whole solution (OpenR's TPPO): a step's advantage includes what follows it.
- `group`: no critic. The problem's group of samples is the baseline (GRPO with process
  supervision): step rewards are normalised over all the group's steps, a token's
  advantage is the sum of the normalised rewards of its step and the steps after it, plus
  the normalised outcome.

Step rewards are shaped against reward hacking (`shaping`): `clip` (min(score - 0.5, 0):
no step earns more than nothing, so writing more steps never pays, Gao et al. 2410.15115),
`delta` (score_k - score_{k+1}: the return from a step telescopes to its own score),
`progress` (score_k - score_{k-1}: the change the step made to the value of the solution so
far, a process advantage; the rewards sum to the last score, so more steps never pay), or
`none`. The oracle's step accuracy of the samples is logged beside the reward, so a policy
that learns to please the PRM instead of solving shows as the two curves parting.

Pure core: plain torch on any Hugging Face causal LM; sampling goes through a `Generator`
(`sampler(model, tokenizer)`), so the transformers backend samples from the weights being
trained. `assets/training.py` wraps it for Dagster.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from qstar_dagster.generation.base import Generator, SamplingParams
from qstar_dagster.spec import option
from qstar_dagster.tasks.domains import domain
from qstar_dagster.tasks.problem import DEFAULT_PROMPT_TEMPLATE, Problem, policy_prompt
from qstar_dagster.tasks.steps import step_format
from qstar_dagster.training.sft import right_pad

log = logging.getLogger(__name__)

STEP_PPO_TRAINER = "step_ppo"  # the checkpoints' config.trainer
# Bumped when the trainer's output changes for the same inputs; part of the checkpoint's id
# and the step_ppo_policy asset's code version.
STEP_PPO_REVISION = 3
CREDITS = ("step", "gae", "group")
REWARDS = ("prm", "mc", "oracle", "none")  # none: the outcome alone (outcome-only RL)
AFTER_ERROR = ("mask", "keep")
BASELINES = ("critic", "group")
SHAPINGS = ("clip", "delta", "progress", "none")
KL_ESTIMATORS = ("k3", "k2")
STATE = "state.pt"  # the progress of an unfinished training, in its progress directory


@dataclass(frozen=True)
class StepPPOSpec:
    iterations: int = option(12, "PPO iterations (sample, score, update)")
    problems_per_iteration: int = option(32, "training problems sampled per iteration")
    group_size: int = option(4, "samples per problem (the baseline of credit=group)")
    temperature: float = option(0.7, "sampling temperature; log-probabilities are taken at the same temperature")
    max_new_tokens: int = option(96, "tokens per solution")
    reward: str = option("prm", f"step rewards from: {', '.join(REWARDS)} (none: the outcome alone)")
    credit: str = option("step", f"credit assignment: {', '.join(CREDITS)}")
    shaping: str = option("clip", f"step-reward shaping against hacking: {', '.join(SHAPINGS)}")
    outcome_weight: float = option(1.0, "weight of the outcome reward (1 right, 0 wrong) at the solution's end")
    baseline: str = option("critic", "credit step's baseline: critic (a value head) or group (no critic: the "
                                     "mean reward of the problem's samples' steps at the same depth)")
    after_error: str = option("keep", "steps after a wrong solution's first step scored below 0.5: mask (no policy "
                                      "gradient: their score is the doomed prefix's, not theirs) or keep")
    mc_n: int = option(4, "reward=mc: completions per step prefix")
    ppo_epochs: int = option(2, "passes over each iteration's samples")
    minibatch_size: int = option(32, "sequences per optimizer step")
    lr: float = option(2e-5, "learning rate (AdamW, constant)")
    adam_eps: float = option(1e-8, "AdamW's epsilon")
    clip: float = option(0.2, "PPO's clip range of the probability ratio")
    kl_coef: float = option(0.05, "weight of the KL penalty against the starting policy")
    kl_estimator: str = option("k3", "the KL penalty's per-token term: k3 (its gradient grows as ref/policy where the "
                                     "policy left a token) or k2 (half the squared log-ratio: the gradient of "
                                     "KL(policy || reference) on the policy's own samples; README, \"The KL penalty\")",
                               added=True)
    sft_coef: float = option(0.0, "weight of a supervised term: the negative log-likelihood (temperature 1) of "
                                  "the iteration's right samples, RFT inside the update (self-imitation); 0: "
                                  "off (README, \"A supervised term\")", added=True)
    vf_coef: float = option(0.5, "weight of the value loss (credit step and gae)")
    vf_lr: float = option(0.0, "the value head's learning rate (credit step and gae); 0: the policy's lr")
    gamma: float = option(1.0, "discount per token")
    lam: float = option(0.95, "GAE's lambda (credit gae; within a step, credit step uses 1)")
    eval_every: int = option(4, "iterations between held-out greedy measurements; 0: at the end only")
    seed: int = option(0, "seed of the problems, the samples and the value head")

    def __post_init__(self) -> None:
        for name, value, allowed in (("reward", self.reward, REWARDS), ("credit", self.credit, CREDITS),
                                     ("shaping", self.shaping, SHAPINGS), ("baseline", self.baseline, BASELINES),
                                     ("after_error", self.after_error, AFTER_ERROR),
                                     ("kl_estimator", self.kl_estimator, KL_ESTIMATORS)):
            if value not in allowed:
                raise ValueError(f"step_ppo {name} must be one of {', '.join(allowed)}, got {value!r}")
        if self.credit == "group" and self.group_size < 2:
            raise ValueError("credit=group needs group_size >= 2: the other samples of a problem are the baseline")
        if self.iterations < 1 or self.problems_per_iteration < 1 or self.group_size < 1:
            raise ValueError("iterations, problems_per_iteration and group_size must be >= 1")

    @property
    def needs_critic(self) -> bool:
        return self.credit == "gae" or (self.credit == "step" and self.baseline == "critic")


# --- rewards and advantages: pure functions on lists, checked by hand in the tests -----------


def shape(scores: Sequence[float], shaping: str, threshold: float = 0.5) -> list[float]:
    """Step scores in [0, 1] (a PRM's probability, a Monte Carlo value, the oracle's 0/1) ->
    step rewards."""
    if shaping == "none":
        return [float(s) for s in scores]
    if shaping == "clip":
        return [min(float(s) - threshold, 0.0) for s in scores]
    if shaping == "delta":
        return [float(s) - float(nxt) for s, nxt in itertools.pairwise(scores)] + [float(scores[-1])] if scores else []
    if shaping == "progress":
        # score_k - score_k-1: what the step changed in the value of the solution so far (the first
        # step against 0, a constant that a group baseline removes). A choice that leads into a dead
        # end takes the whole drop; the steps after it, in a state already lost, get ~0 whatever
        # they do. Setlur et al. 2410.08146 ("process advantage verifiers"). Sums to the last score.
        return [float(b) - float(a) for a, b in itertools.pairwise([0.0, *scores])]
    raise ValueError(f"shaping must be one of {', '.join(SHAPINGS)}, got {shaping!r}")


def gae(rewards: Sequence[float], values: Sequence[float], gamma: float = 1.0, lam: float = 0.95) -> list[float]:
    """Generalised advantage estimates of one episode (the value after its last token is 0)."""
    out, running = [0.0] * len(rewards), 0.0
    for t in reversed(range(len(rewards))):
        nxt = values[t + 1] if t + 1 < len(values) else 0.0
        running = rewards[t] + gamma * nxt - values[t] + gamma * lam * running
        out[t] = running
    return out


def step_advantages(token_step: Sequence[int], rewards: Sequence[float], values: Sequence[float],
                    gamma: float = 1.0) -> list[float]:
    """credit=step: each step is an episode of its own tokens, its reward paid at its end:
    a token's advantage is the step's reward (discounted to it) minus the value of its state,
    never anything from later steps. No lambda within a step: the reward is the whole step's,
    and the tokens that decide it are its first (`8 - 4` of `8 - 4 = 4 (left: 4 7 8)`), which
    GAE's decay from the step's end would credit least. `token_step[i]`: the step of token i."""
    out: list[float] = []
    start = 0
    while start < len(token_step):
        end = start
        while end < len(token_step) and token_step[end] == token_step[start]:
            end += 1
        r = [0.0] * (end - start)
        r[-1] = rewards[token_step[start]]
        out += gae(r, values[start:end], gamma, 1.0)
        start = end
    return out


def gae_advantages(token_step: Sequence[int], rewards: Sequence[float], values: Sequence[float],
                   gamma: float = 1.0, lam: float = 0.95) -> list[float]:
    """credit=gae: each step's reward on its last token, GAE across the whole solution."""
    r = [0.0] * len(token_step)
    for i, k in enumerate(token_step):
        if i + 1 == len(token_step) or token_step[i + 1] != k:
            r[i] += rewards[k]
    return gae(r, values, gamma, lam)


def group_advantages(group: Sequence[tuple[Sequence[float], float]], eps: float = 1e-6) -> list[list[float]]:
    """credit=group: `group` is one problem's samples as (step rewards, outcome). Step rewards
    are normalised over all the group's steps and the outcomes over its samples; a step's
    advantage is the sum of the normalised rewards from it to the end, plus the normalised
    outcome. Returns each sample's per-step advantages."""
    def normalise(xs):
        if not xs:
            return lambda x: 0.0
        mean = sum(xs) / len(xs)
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs))
        return lambda x: (x - mean) / (std + eps)

    steps = normalise([r for rewards, _ in group for r in rewards])
    outcome = normalise([o for _, o in group])
    out = []
    for rewards, o in group:
        normed = [steps(r) for r in rewards]
        out.append([sum(normed[k:]) + outcome(o) for k in range(len(rewards))])
    return out


def depth_baseline_advantages(group: Sequence[Sequence[float]]) -> list[list[float]]:
    """credit=step, baseline=group: `group` is one problem's samples' step rewards (the
    outcome included on each last step). A step's advantage is its reward minus the mean
    reward of the group's steps at the same depth: for the first step, whose state all the
    samples share, that is the value of the state the choice was made in; deeper it is the
    problem's typical step there. Nothing from later steps, as with the critic."""
    by_depth: dict[int, list[float]] = {}
    for rewards in group:
        for k, r in enumerate(rewards):
            by_depth.setdefault(k, []).append(r)
    mean = {k: sum(rs) / len(rs) for k, rs in by_depth.items()}
    return [[r - mean[k] for k, r in enumerate(rewards)] for rewards in group]


def whiten(xs: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    n = mask.sum().clamp(min=1)
    mean = (xs * mask).sum() / n
    var = (((xs - mean) * mask) ** 2).sum() / n
    return (xs - mean) / (var.sqrt() + eps) * mask


# --- one sample, encoded --------------------------------------------------------------------


@dataclass
class Sample:
    problem: Problem
    group: int  # index of its problem in the iteration
    text: str
    steps: list[str]
    ids: list[int]  # prompt + completion tokens
    n_prompt: int
    token_step: list[int]  # the step of each completion token
    correct: bool = False
    scores: list[float] = field(default_factory=list)  # the reward source's step scores
    oracle: list[bool] | None = None  # the oracle's verdict per step, where the domain has one
    step_rewards: list[float] = field(default_factory=list)  # shaped step rewards
    rewards: list[float] = field(default_factory=list)  # the same with the outcome added on the last step
    credited_steps: int | None = None  # steps that get a policy gradient (None: all)


def credited_steps(scores: Sequence[float], correct: bool, threshold: float = 0.5) -> int | None:
    """after_error=mask: a wrong solution's steps up to and including the first one scored
    below `threshold`. The steps after it inherit its doom: a PRM, Monte Carlo values and the
    oracle all score them low whatever they do (after `53 - 47 = 8`, the right `8 * 3 = 24`
    scores 0), so a gradient on them would teach the policy that right arithmetic is wrong.
    None (all steps) for a right solution, or when no step is scored below `threshold`."""
    if correct:
        return None
    first = next((k for k, x in enumerate(scores) if x < threshold), None)
    return None if first is None else first + 1


def _pieces(text: str, separator: str) -> tuple[list[str], list[int], list[str]]:
    """The text's pieces between separators, the step each piece belongs to (a blank piece
    joins the step before it), and the steps (the non-blank pieces, stripped)."""
    pieces = text.split(separator)
    steps = [p.strip() for p in pieces if p.strip()]
    step_of_piece, n = [], 0
    for piece in pieces:
        n += bool(piece.strip())
        step_of_piece.append(max(0, n - 1))
    return pieces, step_of_piece, steps


def encode_sample(tok, prompt: str, text: str, separator: str, finished: bool) -> tuple[list[int], int, list[int], list[str]]:
    """(ids, prompt length, each completion token's step, the steps). The completion is
    tokenized piece by piece (each step with its separator), so every token belongs to one
    step; blank pieces and the end of sequence go with the step before them."""
    ids = tok(prompt, add_special_tokens=True)["input_ids"]  # as the generator encodes it (a BOS where the model has one)
    n_prompt = len(ids)
    pieces, step_of_piece, steps = _pieces(text, separator)
    token_step: list[int] = []
    for i, piece in enumerate(pieces):
        new = tok(piece + (separator if i + 1 < len(pieces) else ""), add_special_tokens=False)["input_ids"]
        ids += new
        token_step += [step_of_piece[i]] * len(new)
    if finished and tok.eos_token_id is not None:
        ids.append(tok.eos_token_id)
        token_step.append(step_of_piece[-1])
    return ids, n_prompt, token_step, steps


def encode_sampled(tok, prompt: str, text: str, token_ids: Sequence[int], separator: str
                   ) -> tuple[list[int], int, list[int], list[str]] | None:
    """`encode_sample` on the tokens the generator drew rather than a re-encoding of its
    text, which can differ (a subword model splits a step's text alone otherwise than inside
    the solution; a sampled special token vanishes from the decoded text). Each token belongs
    to the step its first character falls in, a separator to the step it ends; tokens with no
    text (the end of sequence) to the step before them. None when the tokens do not decode to
    `text` (the backend cut it): the caller re-encodes the text."""
    ids = tok(prompt, add_special_tokens=True)["input_ids"]
    if tok.decode(list(token_ids), skip_special_tokens=True) != text:
        return None
    _, step_of_piece, steps = _pieces(text, separator)
    token_step = []
    for i in range(len(token_ids)):
        start = len(tok.decode(list(token_ids[:i]), skip_special_tokens=True))  # where token i's text begins
        token_step.append(step_of_piece[text[:start].count(separator)])
    return ids + list(token_ids), len(ids), token_step, steps


def make_samples(tok, problems: Sequence[Problem], prompts: Sequence[str], completions) -> list[Sample]:
    """One iteration's samples: each completion of problem g (`completions[g]`, from the
    generator) cut into the domain's steps, graded, and judged by the oracle where the domain
    has one. Completions with nothing generated are left out (nothing to credit)."""
    samples: list[Sample] = []
    for g, (p, prompt, cs) in enumerate(zip(problems, prompts, completions)):
        d = domain(p.domain)
        sep = step_format(p.domain).separator
        for c in cs:
            encoded = encode_sampled(tok, prompt, c.text, c.token_ids, sep) if c.token_ids is not None else None
            ids, n_prompt, token_step, steps = encoded or encode_sample(tok, prompt, c.text, sep,
                                                                        c.finish_reason == "stop")
            if len(ids) == n_prompt:
                continue
            s = Sample(p, g, c.text, steps, ids, n_prompt, token_step, correct=d.grade(p, c.text)[1])
            s.oracle = d.oracle(p, steps).labels[: len(steps)] if d.has_oracle and steps else None
            samples.append(s)
    return samples


def reward_samples(samples: Sequence[Sample], step_scores: Sequence[Sequence[float]], spec: StepPPOSpec) -> None:
    """Set each sample's scores, shaped step rewards, rewards (the outcome added on the last
    step) and, for after_error=mask, its credited steps."""
    for s, sc in zip(samples, step_scores):
        s.scores = list(sc)
        s.step_rewards = (shape(s.scores, spec.shaping) if s.scores else [0.0] * len(s.steps)) or [0.0]
        s.rewards = s.step_rewards[:-1] + [s.step_rewards[-1] + spec.outcome_weight * float(s.correct)]
        s.credited_steps = credited_steps(s.scores, s.correct) if spec.after_error == "mask" else None


# --- the model: policy with a value head ----------------------------------------------------


class ValueHead(torch.nn.Module):
    """A scalar per token from the policy's last hidden state (the backbone is shared)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.linear = torch.nn.Linear(hidden, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden).squeeze(-1)


def _pad(samples: Sequence[Sample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids [B, T] (right-padded), attention mask, and the mask of completion tokens whose
    log-probability is trained ([B, T-1], aligned with the logits that predict them)."""
    ids, mask = right_pad([s.ids for s in samples], pad_id)
    action = torch.zeros((len(samples), ids.shape[1] - 1))
    for r, s in enumerate(samples):
        action[r, s.n_prompt - 1: len(s.ids) - 1] = 1
    return ids, mask, action


def _credit_mask(samples: Sequence[Sample], action: torch.Tensor) -> torch.Tensor:
    """`action` restricted to the tokens of each sample's credited steps (the policy
    gradient's tokens; the KL penalty still covers them all)."""
    credit = action.clone()
    for r, s in enumerate(samples):
        if s.credited_steps is not None:
            a = s.n_prompt - 1
            for i, k in enumerate(s.token_step):
                if k >= s.credited_steps:
                    credit[r, a + i] = 0
    return credit


def make_optimizer(model, spec: StepPPOSpec, device: str = "cpu") -> tuple[ValueHead | None, torch.optim.Optimizer]:
    """The value head (where the credit needs one) and the AdamW over it and the policy."""
    value_head = ValueHead(model.config.hidden_size).to(device) if spec.needs_critic else None
    groups = [{"params": list(model.parameters())}]
    if value_head is not None:  # a head that starts at zero: at the policy's small lr it barely moves
        groups.append({"params": list(value_head.parameters()), "lr": spec.vf_lr or spec.lr})
    return value_head, torch.optim.AdamW(groups, lr=spec.lr, weight_decay=0.0, eps=spec.adam_eps)


def _forward(model, value_head, ids, mask, temperature: float, plain: bool = False):
    """(log-probability of each next token at `temperature` [B, T-1], values [B, T-1] or None,
    with `plain` the log-probability at temperature 1 (the supervised term's), else None)."""
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=value_head is not None)
    logits = out.logits[:, :-1].float()

    def token_logp(scaled):
        return torch.log_softmax(scaled, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)

    logp = token_logp(logits / max(temperature, 1e-6))
    # the value of the state before each action token: the hidden state that predicts it
    values = value_head(out.hidden_states[-1][:, :-1].float()) if value_head is not None else None
    return logp, values, token_logp(logits) if plain else None


def _per_token(samples: Sequence[Sample], width: int, values: torch.Tensor | None, spec: StepPPOSpec,
               group_adv: dict[int, list[float]]) -> torch.Tensor:
    """Advantages [B, width] aligned with `_pad`'s action mask."""
    adv = torch.zeros((len(samples), width))  # on the CPU: filled row by row
    for r, s in enumerate(samples):
        n = len(s.token_step)
        if n == 0:
            continue
        a = s.n_prompt - 1
        if r in group_adv:
            per_step = group_adv[r]
            row = [per_step[k] if k < len(per_step) else 0.0 for k in s.token_step]
        else:
            v = values[r, a: a + n].tolist()
            rewards = s.rewards or [0.0]
            row = (step_advantages(s.token_step, rewards, v, spec.gamma) if spec.credit == "step"
                   else gae_advantages(s.token_step, rewards, v, spec.gamma, spec.lam))
        adv[r, a: a + n] = torch.tensor(row)
    return adv


# --- the training loop ----------------------------------------------------------------------

ScoreFn = Callable[[Sequence[Sample], Generator], list[list[float]]]


def oracle_scores(samples: Sequence[Sample], generator: Generator | None = None) -> list[list[float]]:
    """The domain's step oracle as 0/1 step scores (for measurement; what MC labels estimate)."""
    return [[float(v) for v in (s.oracle or [False] * len(s.steps))] for s in samples]


def prm_scores(scorer) -> ScoreFn:
    """A PRM's step scores: `scorer.score_batch([(problem, steps)])` (PRMScorer)."""
    def score(samples: Sequence[Sample], generator: Generator | None = None) -> list[list[float]]:
        items = [(s.problem.problem, s.steps) for s in samples if s.steps]
        it = iter(scorer.score_batch(items) if items else [])
        return [next(it) if s.steps else [] for s in samples]
    return score


def mc_scores(n: int, temperature: float, max_new_tokens: int, seed: int = 0) -> ScoreFn:
    """Monte Carlo values of each step prefix (Math-Shepherd's soft label), with completions
    from the policy being trained; the group's own finished samples count as completions."""
    from qstar_dagster.generation.base import Completion
    from qstar_dagster.search.estimate import EstimatorSpec, PrefixEstimator
    from qstar_dagster.search.tree import Tree

    def score(samples: Sequence[Sample], generator: Generator) -> list[list[float]]:
        estimator = PrefixEstimator(generator, EstimatorSpec(n=n, temperature=temperature,
                                                             max_new_tokens=max_new_tokens), seed=seed)
        trees: dict[int, Tree] = {}
        items, owners = [], []
        for i, s in enumerate(samples):
            fmt = step_format(s.problem.domain)
            tree = trees.setdefault(s.group, Tree(f"ppo{s.group}", s.problem, policy_prompt(s.problem.problem), fmt,
                                                  max(16, len(s.steps) + 1)))
            node = tree.root
            for k, text in enumerate(s.steps):
                last = k + 1 == len(s.steps)
                node = tree.add_child(node, Completion(text, 0, 0.0, "stop", stop_string=None if last else
                                                       fmt.separator))
                items.append((tree, node))
                owners.append(i)
        out: list[list[float]] = [[] for _ in samples]
        for owner, est in zip(owners, estimator.estimate(items) if items else []):
            out[owner].append(est.soft)
        return out

    return score


@dataclass
class Progress:
    """What an unfinished training has done: saved after every iteration, so a killed run
    resumes from its last saved iteration."""
    iteration: int = 0
    curves: dict = field(default_factory=lambda: {k: [] for k in (
        "reward", "step_score", "oracle_step_accuracy", "sample_accuracy", "kl", "heldout_greedy", "loss",
        "value_explained")})
    train_seconds: float = 0.0
    sampled_tokens: int = 0


def _fingerprint(spec: StepPPOSpec, extra: dict) -> str:
    from qstar_dagster.tasks.problem import content_id
    return content_id("ppo", asdict(spec), extra)


def _save_state(progress_dir: Path, model, value_head, opt, progress: Progress, fingerprint: str) -> None:
    progress_dir.mkdir(parents=True, exist_ok=True)
    tmp = progress_dir / (STATE + ".tmp")
    torch.save({"fingerprint": fingerprint, "model": model.state_dict(),
                "value_head": value_head.state_dict() if value_head is not None else None,
                "optimizer": opt.state_dict(), "progress": asdict(progress)}, tmp)
    os.replace(tmp, progress_dir / STATE)  # a kill leaves the previous state whole


def _load_state(progress_dir: Path | None, fingerprint: str) -> dict | None:
    f = progress_dir / STATE if progress_dir else None
    if not f or not f.is_file():
        return None
    try:
        state = torch.load(f, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - a torn or foreign file: restart cleanly
        log.warning("step_ppo: cannot read %s (%s); training from the start", f, e)
        return None
    if state.get("fingerprint") != fingerprint:
        log.warning("step_ppo: %s was saved by another config; training from the start", f)
        return None
    return state


def iteration_batch(problems: Sequence[Problem], spec: StepPPOSpec, it: int) -> list[Problem]:
    """The problems iteration `it` samples: seeded by the iteration, so a resumed run draws the
    same ones, and a benchmark can give offline arms the problems the PPO arms saw."""
    return random.Random(spec.seed * 100003 + it).sample(list(problems), min(spec.problems_per_iteration,
                                                                             len(problems)))


def train_step_ppo(base_dir: str | Path, problems: Sequence[Problem], out_dir: Path,
                   spec: StepPPOSpec = StepPPOSpec(), *, score: ScoreFn | None = None,
                   sampler: Callable[[object, object], Generator] | None = None,
                   evaluate: Callable[[object, object], float] | None = None,
                   progress_dir: Path | None = None, template: str = DEFAULT_PROMPT_TEMPLATE,
                   identity: dict | None = None, device: str = "cpu") -> dict:
    """Train the policy in `base_dir` with step-level PPO on `problems` and save it to
    `out_dir` as a standard causal LM. `score(samples, generator)`: the reward source's step
    scores (None: `spec.reward` none or oracle); `sampler(model, tok)`: the generator that
    samples from the weights being trained (default: transformers); `evaluate(model, tok)`:
    held-out greedy accuracy for the curve. `progress_dir`: where the state of every finished
    iteration is kept, so a killed training resumes (same spec and `identity`); removed at the end."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qstar_dagster.generation.hf import TransformersGenerator

    if not problems:
        raise ValueError("step_ppo: the training prompt set is empty")
    if spec.reward in ("prm", "mc") and score is None:
        raise ValueError(f"step_ppo reward={spec.reward} needs a score function (a PRM scorer or the policy)")
    if spec.reward == "oracle":
        score = oracle_scores
    sampler = sampler or (lambda m, t: TransformersGenerator(m, t, device=device))
    torch.manual_seed(spec.seed)
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir).to(device)
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    value_head, opt = make_optimizer(model, spec, device)
    fingerprint = _fingerprint(spec, {"base": str(base_dir), "n_problems": len(problems), **(identity or {})})
    progress = Progress()
    if state := _load_state(progress_dir, fingerprint):
        model.load_state_dict(state["model"])  # (saved from the same device kind or mapped by torch.load)
        if value_head is not None and state["value_head"] is not None:
            value_head.load_state_dict(state["value_head"])
        opt.load_state_dict(state["optimizer"])
        progress = Progress(**state["progress"])
        log.info("step_ppo: resuming after iteration %d of %d", progress.iteration, spec.iterations)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    started = time.monotonic() - progress.train_seconds
    for it in range(progress.iteration + 1, spec.iterations + 1):
        t0 = time.monotonic()
        batch = iteration_batch(problems, spec, it)
        model.eval()
        gen = sampler(model, tok)
        prompts = [policy_prompt(p.problem, template) for p in batch]
        # logprobs: the backend returns the token ids it drew, which are what gets trained
        completions = gen.generate(prompts, SamplingParams(n=spec.group_size, temperature=spec.temperature,
                                                           max_new_tokens=spec.max_new_tokens, seed=spec.seed * 7919 + it,
                                                           logprobs=True))
        samples = make_samples(tok, batch, prompts, completions)
        sampled_tokens = sum(len(s.token_step) for s in samples)
        step_scores = score(samples, gen) if score is not None and spec.reward != "none" else [[] for _ in samples]
        reward_samples(samples, step_scores, spec)
        stats = _update(model, reference, value_head, opt, samples, spec, pad_id)
        progress.iteration = it
        progress.sampled_tokens += sampled_tokens
        oracle_steps = [v for s in samples if s.oracle for v in s.oracle]
        all_scores = [x for s in samples for x in s.scores]
        point = {"reward": sum(sum(s.rewards) for s in samples) / max(1, len(samples)),
                 "step_score": sum(all_scores) / len(all_scores) if all_scores else None,
                 "oracle_step_accuracy": sum(oracle_steps) / len(oracle_steps) if oracle_steps else None,
                 "sample_accuracy": sum(s.correct for s in samples) / max(1, len(samples)),
                 "kl": stats["kl"], "loss": stats["loss"], "value_explained": stats["value_explained"]}
        for k, v in point.items():
            progress.curves[k].append((it, v))
        if evaluate and ((spec.eval_every and it % spec.eval_every == 0) or it == spec.iterations):
            model.eval()
            progress.curves["heldout_greedy"].append((it, evaluate(model, tok)))
        progress.train_seconds = time.monotonic() - started
        rate = progress.train_seconds / it  # seconds per iteration, a resumed run's earlier ones included
        held = progress.curves["heldout_greedy"]
        log.info("step_ppo: iteration %d/%d, reward %.3f, step score %s, oracle step accuracy %s, samples right %.1f%%, "
                 "KL %.4f, value explains %s, %.0f tokens/s, ETA %.0fs%s", it, spec.iterations, point["reward"],
                 _fmt(point["step_score"]), _fmt(point["oracle_step_accuracy"]), 100 * point["sample_accuracy"],
                 point["kl"], _fmt(point["value_explained"]), sampled_tokens / max(1e-9, time.monotonic() - t0),
                 (spec.iterations - it) * rate,
                 f", held-out greedy {held[-1][1]:.1%}" if held and held[-1][0] == it else "")
        if progress_dir is not None and it < spec.iterations:
            _save_state(progress_dir, model, value_head, opt, progress, fingerprint)
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    if value_head is not None:
        torch.save(value_head.state_dict(), out_dir / "value_head.pt")
    if progress_dir is not None:
        shutil.rmtree(progress_dir, ignore_errors=True)
    curves = progress.curves
    return {"final_loss": curves["loss"][-1][1] if curves["loss"] else None,
            "train_seconds": progress.train_seconds, "iterations": spec.iterations,
            "sampled_tokens": progress.sampled_tokens, "n_train_problems": len(problems),
            "final_reward": curves["reward"][-1][1], "final_kl": curves["kl"][-1][1],
            "final_oracle_step_accuracy": curves["oracle_step_accuracy"][-1][1],
            "loss_curve": curves["loss"], "curves": curves, "config": asdict(spec)}


def kl_terms(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token (penalty, estimate) of KL(policy || reference) on the policy's samples.
    The estimate is k3 = r - log r - 1 (r = ref/policy): non-negative, unbiased, the figure
    logged whatever the penalty. As a loss, k3's gradient is (1 - r) grad log p, whose mean is
    the gradient of KL(reference || policy): it grows without bound where the policy left a
    token the reference liked. k2 = (log r)^2 / 2 has gradient -log r grad log p, whose mean
    is the gradient of KL(policy || reference) itself."""
    log_r = ref_logp - logp
    k3 = torch.exp(log_r) - log_r - 1
    if estimator == "k3":
        return k3, k3
    if estimator == "k2":
        return 0.5 * log_r ** 2, k3
    raise ValueError(f"kl_estimator must be one of {', '.join(KL_ESTIMATORS)}, got {estimator!r}")


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def _update(model, reference, value_head, opt, samples: list[Sample], spec: StepPPOSpec, pad_id: int) -> dict:
    """PPO epochs over one iteration's samples; returns the mean loss and KL, and the share of
    the returns' variance the value head explained before the update (None without one)."""
    if not samples:
        return {"loss": None, "kl": 0.0, "value_explained": None}
    device = next(model.parameters()).device
    ids, mask, action = _pad(samples, pad_id)
    credit = _credit_mask(samples, action)
    # the supervised term's tokens: every completion token of a right sample
    right = action * torch.tensor([float(s.correct) for s in samples])[:, None]
    ids, mask, action, credit, right = (t.to(device) for t in (ids, mask, action, credit, right))
    with torch.no_grad():
        old_logp, values, _ = _forward(model, value_head, ids, mask, spec.temperature)
        ref_logp, _, _ = _forward(reference, None, ids, mask, spec.temperature)
    group_adv: dict[int, list[float]] = {}  # the critic-free modes' advantages per step, by row
    if not spec.needs_critic:
        by_group: dict[int, list[int]] = {}
        for r, s in enumerate(samples):
            by_group.setdefault(s.group, []).append(r)
        for rows in by_group.values():
            if spec.credit == "group":
                per_row = group_advantages([(samples[r].step_rewards, spec.outcome_weight * float(samples[r].correct))
                                            for r in rows])
            else:
                per_row = depth_baseline_advantages([samples[r].rewards for r in rows])
            group_adv.update(zip(rows, per_row))
    adv = _per_token(samples, action.shape[1], None if values is None else values.cpu(), spec, group_adv).to(device)
    returns = adv + values if values is not None else None  # the value head's targets, before whitening
    explained = None  # of the returns by the value head before this update: 1 a perfect critic, 0 none
    if returns is not None:
        on = action.bool()
        var = returns[on].var()
        explained = (1 - (returns[on] - values[on]).var() / var).item() if var > 0 else None
    if spec.credit != "group":
        adv = whiten(adv, credit)
    order = torch.Generator().manual_seed(spec.seed)
    losses, kls = [], []
    model.train()
    for _ in range(spec.ppo_epochs):
        perm = torch.randperm(len(samples), generator=order).to(device)
        for start in range(0, len(samples), spec.minibatch_size):
            idx = perm[start: start + spec.minibatch_size]
            m, c = action[idx], credit[idx]
            n, n_c = m.sum().clamp(min=1), c.sum().clamp(min=1)
            logp, v, plain = _forward(model, value_head, ids[idx], mask[idx], spec.temperature,
                                      plain=bool(spec.sft_coef))
            ratio = torch.exp(logp - old_logp[idx])
            a = adv[idx]
            pg = -torch.min(ratio * a, ratio.clamp(1 - spec.clip, 1 + spec.clip) * a)
            penalty, kl = kl_terms(logp, ref_logp[idx], spec.kl_estimator)
            loss = (pg * c).sum() / n_c + spec.kl_coef * (penalty * m).sum() / n
            if spec.sft_coef and right[idx].any():
                loss = loss - spec.sft_coef * (plain * right[idx]).sum() / right[idx].sum()
            if v is not None:
                loss = loss + spec.vf_coef * (((v - returns[idx]) ** 2) * m).sum() / n
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
            opt.step()
            losses.append(loss.item())
            kls.append(((kl * m).sum() / n).item())
    model.eval()
    return {"loss": sum(losses) / len(losses), "kl": sum(kls) / len(kls), "value_explained": explained}
