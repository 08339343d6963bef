"""Process reward models: a step scorer built from a causal LM.

Two heads, one interface (`PRMScorer.score_batch(items) -> step scores`):

- `generative` (the default): the step's score is the LM's own log-likelihood of the step's
  tokens, mapped to a probability by a scale and a bias, σ(a · Σ log p(token) + b). The LM is
  the one `train_prm` starts from: the policy, or a verifier trained to compute better than
  the policy (the `prm_model` asset's `backbone`; README, "A PRM that verifies"). A wrong
  step in this domain is a wrong digit, and the place where an LM "knows" the digit is its
  next-token distribution just before it; a classifier must instead recompute the arithmetic
  from the hidden state after the digit was read. By default only the bias is fitted to the
  labels (the calibrated policy likelihood); `epochs` / `steps` fine-tune the LM through the
  score (pointwise BCE, pairwise Bradley-Terry on sibling steps, a joint LM loss), which on
  the built-in domain made held-out ranking worse (README, "A PRM that verifies"). (The idea
  is the generative verifiers' and implicit PRMs': read the score off the LM.)
- `classifier` (the earlier design): transformers' token-classification head with one logit,
  read at the step's separator (or its last token), trained with BCE. It learns which
  problems are hard, not which step is wrong (same README section).

Each step is tokenized on its own (prompt, then step + separator), so spans are exact for
any tokenizer, including ones that would merge a separator with its neighbours. Targets are
hard (0/1) or soft (the Monte Carlo fraction, Math-Shepherd's soft variant). By default a
path is trained only up to its first wrong step, PRM800K's convention: after an error the
labels of the later steps say nothing about those steps themselves.

Datasets are read in TRL's stepwise-supervision format (`prompt`, `completions`, `labels`,
here with an optional `soft_labels`), which is what users' PRM datasets look like. TRL no
longer ships a PRM trainer, so the loop is ours: plain torch, seeded, AdamW with warm-up and
cosine decay, progress in the package log.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from qstar_dagster.spec import option
from qstar_dagster.training.sft import (
    FitSpec,
    encode_pairs,
    epoch_batches,
    lm_batches,
    log_progress,
    n_steps,
    right_pad,
    warmup_cosine,
)

log = logging.getLogger(__name__)

PRM_SEPARATOR = "\n"
PRM_HEADS = ("generative", "classifier")
HEAD_FILE = "prm_head.json"  # which head a checkpoint has, and the generative head's scale and bias


@dataclass(frozen=True)
class PRMTrainSpec:
    head: str = option("generative", "generative (the LM's own likelihood of each step, with a bias fitted to the "
                       "labels; epochs / steps fine-tune the LM too) or classifier (a one-logit head at each step's "
                       "separator; must be trained)")
    target: str = option("hard", "hard (0/1 labels, cross-entropy) or soft (Monte Carlo fractions, BCE)")
    # 0 (the default): no fine-tuning; the generative head is then the policy's own step
    # likelihood with a bias fitted to the labels. Every fine-tuning of the LM on one round's
    # labels measured in bench/prm.py ranked held-out steps worse than that (README, "A PRM
    # that verifies"); set epochs or steps to fine-tune (a classifier needs it).
    epochs: float = option(0.0, "passes over the dataset; 0 (default): no fine-tuning, the calibrated policy "
                           "likelihood (fine-tuning ranked held-out steps worse: bench/prm.py)")
    steps: int | None = option(None, "optimizer steps; unset: epochs over the dataset")
    batch_size: int = option(32, "paths per step")
    lr: float = option(3e-4, "peak learning rate (warm-up, then cosine)")
    warmup: int = option(20, "warm-up steps")
    seed: int = option(0, "seed of the batches and the head")
    stop_at_first_error: bool = option(True, "learn each path up to its first wrong step only (PRM800K's "
                                       "convention)")
    # a search tree's rows repeat their shared first steps in every path through them, which
    # would weigh those few steps many times over
    once_per_step: bool = option(True, "learn each distinct (prefix, step) once")
    read_at: str = option("separator", "classifier: the logit at the step's separator, or at its last token (step)")
    freeze_backbone: bool = option(False, "classifier: train the head alone (a linear probe of the policy's "
                                   "features)")
    # Cobbe et al.'s joint objective: it keeps, and adds to, the arithmetic that the step
    # likelihoods read, which fine-tuning on one round's few hundred problems wears down
    lm_weight: float = option(0.0, "generative: weight of a language-model loss on reference solutions of the "
                              "training prompt set (0: none)")
    # Pointwise BCE asks for one threshold over all problems, which a model can meet by
    # learning which problems are hard; the pairwise loss (rStar-Math's process preference
    # loss) compares two steps in the same context, so what differs between them (a digit) is
    # all that it can learn from.
    point_weight: float = option(1.0, "weight of the pointwise BCE on step labels")
    pair_weight: float = option(0.0, "weight of the Bradley-Terry loss on sibling pairs (one prefix, a right and "
                                "a wrong next step)")
    # A problem the labeler never saw solved has every step labeled wrong (Monte Carlo: no
    # completion reached the answer), right steps too: its labels say the problem is hard, not
    # which step is wrong, the shortcut a PRM must not learn
    solved_only: bool = option(False, "learn only the problems where the labels call some step right")
    # The score's sharpness matters to PRM-weighted voting (a sum of scores), not to best-of-N
    # (a ranking). On Monte Carlo labels a fitted scale came out flatter, not sharper (bench/prm.py)
    calibrate: str = option("bias", "generative: fit the bias to the labels (bias), or the scale and the bias "
                            "(platt: Platt scaling; without fine-tuning only)")

    @property
    def fine_tunes(self) -> bool:
        return self.steps != 0 and not (self.steps is None and self.epochs == 0)

    def __post_init__(self) -> None:
        if self.head not in PRM_HEADS:
            raise ValueError(f"PRM head must be one of {', '.join(PRM_HEADS)}, got {self.head!r}")
        if self.target not in ("hard", "soft"):
            raise ValueError(f"PRM target must be hard or soft, got {self.target!r}")
        if self.read_at not in ("separator", "step"):
            raise ValueError(f"PRM read_at must be separator or step, got {self.read_at!r}")
        if self.head == "classifier" and not self.fine_tunes:
            raise ValueError("a classifier PRM must be trained: set epochs or steps (its head starts at random)")
        if self.lm_weight and self.head != "generative":
            raise ValueError("lm_weight needs the generative head (a classifier has no language-model head)")
        if self.calibrate not in ("bias", "platt"):
            raise ValueError(f"PRM calibrate must be bias or platt, got {self.calibrate!r}")
        if self.calibrate == "platt" and (self.fine_tunes or self.head != "generative"):
            # a fitted scale can come out near 0, and through it the labels would never reach the LM
            raise ValueError("calibrate: platt fits the generative head's scale without fine-tuning; set epochs and "
                             "steps to 0, or calibrate to bias")


def encode_steps(tok, prompt: str, steps: Sequence[str],
                 separator: str = PRM_SEPARATOR) -> tuple[list[int], list[tuple[int, int]]]:
    """(input ids, each step's token span [start, end): its text and its separator)."""
    ids = tok(prompt + separator, add_special_tokens=False)["input_ids"]
    spans = []
    for s in steps:
        start = len(ids)
        ids = ids + tok(s + separator, add_special_tokens=False)["input_ids"]
        spans.append((start, len(ids)))
    return ids, spans


def _targets(row: dict, target: str) -> list[float] | None:
    if target == "soft":
        soft = row.get("soft_labels")
        if not soft or any(v is None for v in soft):
            return None  # this labeler gave no fraction: the row cannot teach a soft PRM
        return [float(v) for v in soft]
    return [float(bool(v)) for v in row["labels"]]


def training_examples(tok, rows: Sequence[dict], spec: PRMTrainSpec) -> list[dict]:
    """Encoded rows: ids, step spans and targets (cut after the first wrong step when
    `spec.stop_at_first_error`; NaN for a step an earlier row already teaches when
    `spec.once_per_step`; only the problems with a step labeled right when `spec.solved_only`)."""
    examples, seen = [], set()
    solved = {r["prompt"] for r in rows if any(r["labels"])} if spec.solved_only else None
    for r in rows:
        if solved is not None and r["prompt"] not in solved:
            continue
        targets = _targets(r, spec.target)
        if targets is None:
            continue
        steps = list(r["completions"])
        if spec.stop_at_first_error:
            first_wrong = next((i for i, ok in enumerate(r["labels"]) if not ok), None)
            if first_wrong is not None:
                steps, targets = steps[: first_wrong + 1], targets[: first_wrong + 1]
        if spec.once_per_step:
            keys = [(r["prompt"], *steps[: i + 1]) for i in range(len(steps))]
            targets = [math.nan if k in seen else t for k, t in zip(keys, targets)]
            seen.update(keys)
            if all(math.isnan(t) for t in targets):
                continue
        ids, spans = encode_steps(tok, r["prompt"], steps)
        examples.append({"input_ids": ids, "spans": spans, "targets": targets})
    return examples


def sibling_pairs(rows: Sequence[dict]) -> list[tuple[str, list[str], str, str]]:
    """(prompt, prefix steps, a next step labeled right, one labeled wrong) from rows whose
    paths share the prefix; prefixes past a path's first wrong step are not used (their
    labels say nothing about the steps themselves)."""
    children: dict[tuple, dict[str, bool]] = {}
    for r in rows:
        for i, (step, ok) in enumerate(zip(r["completions"], r["labels"])):
            children.setdefault((r["prompt"], *r["completions"][:i]), {}).setdefault(step, bool(ok))
            if not ok:
                break
    pairs = []
    for (prompt, *prefix), kids in children.items():
        right, wrong = [k for k, ok in kids.items() if ok], [k for k, ok in kids.items() if not ok]
        pairs += [(prompt, prefix, a, b) for a in right for b in wrong]
    return pairs


def _flat_spans(spans: Sequence[Sequence[tuple[int, int]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows = torch.tensor([i for i, ss in enumerate(spans) for _ in ss])
    starts = torch.tensor([a for ss in spans for a, _ in ss])
    ends = torch.tensor([b for ss in spans for _, b in ss])
    return rows, starts, ends


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor, spans: Sequence[Sequence[tuple[int, int]]],
                   eos_id: int | None) -> torch.Tensor:
    """[batch, length - 1]: the log-probability of token t + 1 given the tokens before it,
    except at each step's last token (its separator), where it is the log-probability that
    the step *ends* there: separator or end of sequence. A finished solution's last step is
    followed by the end of sequence in the policy's training data, not by a separator, so
    the separator's own probability there is near 0 and noise from sample to sample; read
    as is, that one token decides the score of every final step, and with it `min` and
    `last` (the bug behind best-of-N below a random pick: README, "A PRM that verifies").
    `eos_id` None reads the separator as is (only to measure that bug)."""
    logp = logits[:, :-1].float().log_softmax(-1)
    token_lp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    if eos_id is None:
        return token_lp
    rows, _, ends = _flat_spans(spans)
    rows, last = rows.to(ids.device), ends.to(ids.device) - 2  # the position that predicts the separator
    ended = torch.logaddexp(token_lp[rows, last], logp[rows, last, eos_id])
    return token_lp.index_put((rows, last), ended)


class _Head(torch.nn.Module):
    """Step logits from a batch: `forward(ids, mask, spans) -> one logit per step`, in row order."""

    def __init__(self, kind: str, model, eos_id: int, scale: float = 1.0, bias: float = 0.0,
                 read_at: str = "separator"):
        super().__init__()
        self.kind, self.model, self.eos_id, self.read_at = kind, model, eos_id, read_at
        # generative: logit = exp(log_scale) * (sum of the step's token log-probabilities) + bias
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(scale)))
        self.bias = torch.nn.Parameter(torch.tensor(float(bias)))

    def step_logprobs(self, ids, mask, spans) -> torch.Tensor:
        logits = self.model(input_ids=ids, attention_mask=mask).logits
        token_lp = token_logprobs(logits, ids, spans, self.eos_id)
        cum = torch.nn.functional.pad(token_lp.cumsum(1), (1, 0))  # cum[:, t]: tokens 1..t
        rows, starts, ends = _flat_spans(spans)
        return cum[rows, ends - 1] - cum[rows, starts - 1]

    def forward(self, ids, mask, spans) -> torch.Tensor:
        if self.kind == "generative":
            return self.log_scale.exp() * self.step_logprobs(ids, mask, spans) + self.bias
        logits = self.model(input_ids=ids, attention_mask=mask).logits.squeeze(-1).float()
        rows, _, ends = _flat_spans(spans)
        return logits[rows, ends - 1 if self.read_at == "separator" else ends - 2]


def _load_head(model_dir: str | Path, eos_id: int, kind: str | None = None, **kw) -> _Head:
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    model_dir = Path(model_dir)
    saved = json.loads((model_dir / HEAD_FILE).read_text()) if (model_dir / HEAD_FILE).is_file() else None
    if kind is None:  # a trained PRM; one without the file is a classifier from before the generative head
        saved = saved or {"head": "classifier", "read_at": "separator"}
        kind, kw = saved["head"], {k: saved[k] for k in ("scale", "bias", "read_at") if k in saved}
    if kind == "generative":
        return _Head(kind, AutoModelForCausalLM.from_pretrained(model_dir), eos_id, **kw)
    return _Head(kind, AutoModelForTokenClassification.from_pretrained(model_dir, num_labels=1), eos_id, **kw)


def _calibrate(head: _Head, examples: Sequence[dict], pad_id: int, batch_size: int, fit_scale: bool = False) -> float:
    """Fit the generative head's bias (and, with `fit_scale`, its scale: Platt scaling) by
    logistic regression of the targets on the step log-likelihoods; returns the fit's BCE.
    Before fine-tuning only the bias is fitted (at scale 1, training starts from the
    calibrated likelihood): where the likelihood says little a fitted scale goes to ~0, and
    through a zero scale the labels would never reach the LM."""
    feats, targets = [], []
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            ids, mask = right_pad([e["input_ids"] for e in chunk], pad_id)
            feats.append(head.step_logprobs(ids, mask, [e["spans"] for e in chunk]))
            targets += [t for e in chunk for t in e["targets"]]
    x, y = torch.cat(feats), torch.tensor(targets)
    x, y = x[~y.isnan()], y[~y.isnan()]
    log_scale = torch.tensor([head.log_scale.item()], requires_grad=fit_scale)
    bias = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([bias, log_scale] if fit_scale else [bias], max_iter=100, line_search_fn="strong_wolfe")

    def loss_fn():
        return torch.nn.functional.binary_cross_entropy_with_logits(log_scale.exp() * x + bias, y)

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    opt.step(closure)
    head.bias.data.fill_(bias.item())
    head.log_scale.data.fill_(log_scale.item())
    with torch.no_grad():
        return loss_fn().item()


def train_prm(base_dir: str | Path, rows: Sequence[dict], out_dir: Path, spec: PRMTrainSpec = PRMTrainSpec(),
              lm_pairs: Sequence[tuple[str, str]] = ()) -> dict:
    """Train a PRM from `base_dir` (a causal LM checkpoint) on stepwise rows (and, with
    `spec.lm_weight`, a language-model loss on `lm_pairs`: (prompt, reference solution));
    save it with its tokenizer and head file to `out_dir`."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    examples = training_examples(tok, rows, spec)
    if not examples:
        raise ValueError(f"no rows with {spec.target} labels to train a PRM on")
    if spec.lm_weight and not lm_pairs:
        raise ValueError("lm_weight is set but no reference solutions (lm_pairs) were given")
    torch.manual_seed(spec.seed)
    head = _load_head(base_dir, tok.eos_token_id, spec.head, read_at=spec.read_at)
    head.model.config.pad_token_id = tok.pad_token_id
    calibration_loss = None
    if spec.head == "generative":
        calibration_loss = _calibrate(head, examples, tok.pad_token_id, 2 * spec.batch_size,
                                      fit_scale=spec.calibrate == "platt")
    elif spec.freeze_backbone:
        for name, p in head.model.named_parameters():
            p.requires_grad = name.startswith("score.")
    total = n_steps(spec.steps, spec.epochs, len(examples), spec.batch_size) if spec.fine_tunes else 0
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.0)
    sched = warmup_cosine(opt, spec.warmup, total)
    head.train()
    batches = epoch_batches(len(examples), spec.batch_size, spec.seed)
    pairs = [[encode_steps(tok, prompt, [*prefix, step]) for step in (a, b)]
             for prompt, prefix, a, b in sibling_pairs(rows)] if spec.pair_weight else []
    if spec.pair_weight and not pairs:
        raise ValueError("pair_weight is set but the rows hold no sibling pair (one prefix, a right and a wrong "
                         "next step); set pair_weight to 0")
    pair_batches = epoch_batches(len(pairs), spec.batch_size, spec.seed) if pairs else None
    lm = lm_batches(encode_pairs(tok, lm_pairs), FitSpec(steps=total, batch_size=spec.batch_size, seed=spec.seed),
                    tok.pad_token_id) if spec.lm_weight else None
    started, losses = time.monotonic(), []
    for step in range(1, total + 1):
        batch = [examples[i] for i in next(batches)]
        ids, mask = right_pad([e["input_ids"] for e in batch], tok.pad_token_id)
        z = head(ids, mask, [e["spans"] for e in batch])
        y = torch.tensor([t for e in batch for t in e["targets"]])
        taught = ~y.isnan()
        loss = spec.point_weight * torch.nn.functional.binary_cross_entropy_with_logits(z[taught], y[taught])
        if pair_batches is not None:
            both = [side for i in next(pair_batches) for side in pairs[i]]  # right, wrong, right, wrong, ...
            pair_ids, pair_mask = right_pad([ids for ids, _ in both], tok.pad_token_id)
            zp = head(pair_ids, pair_mask, [spans[-1:] for _, spans in both])
            loss = loss - spec.pair_weight * torch.nn.functional.logsigmoid(zp[0::2] - zp[1::2]).mean()
        if lm is not None:
            lm_ids, lm_labels = next(lm)
            loss = loss + spec.lm_weight * head.model(input_ids=lm_ids, attention_mask=(lm_ids != tok.pad_token_id).long(),
                                                      labels=lm_labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 25 == 0 or step == total:
            log_progress("prm", step, total, sum(losses[-25:]) / len(losses[-25:]), started)
    head.eval()
    if spec.head == "generative" and total and not spec.point_weight:
        calibration_loss = _calibrate(head, examples, tok.pad_token_id, 2 * spec.batch_size)  # nothing else did
    out_dir.mkdir(parents=True, exist_ok=True)
    head.model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    saved = {"head": spec.head, "read_at": spec.read_at}
    if spec.head == "generative":
        saved |= {"scale": head.log_scale.exp().item(), "bias": head.bias.item()}
    (out_dir / HEAD_FILE).write_text(json.dumps(saved))
    curve = [(i, sum(losses[max(0, i - 25):i]) / len(losses[max(0, i - 25):i])) for i in range(25, total + 1, 25)]
    # with no fine-tuning, the loss is the calibration's (BCE of the fitted bias on the labels)
    return {"final_loss": sum(losses[-25:]) / len(losses[-25:]) if losses else calibration_loss,
            "calibration_loss": calibration_loss,
            "train_seconds": time.monotonic() - started, "n_train_examples": len(examples),
            "n_labeled_steps": sum(not math.isnan(t) for e in examples for t in e["targets"]), "loss_curve": curve,
            "head": saved, "config": asdict(spec)}


class _StepScorer:
    """What the two scorers share: items go in batches of (ids, mask, step spans) on the
    device; `_score(ids, mask, spans)` gives each path's step scores."""

    @torch.no_grad()
    def score_batch(self, items: Sequence[tuple[str, Sequence[str]]], batch_size: int = 64) -> list[list[float]]:
        out = []
        for start in range(0, len(items), batch_size):
            encoded = [encode_steps(self.tok, p, s) for p, s in items[start:start + batch_size]]
            ids, mask = right_pad([ids for ids, _ in encoded], self.tok.pad_token_id)
            out += self._score(ids.to(self.device), mask.to(self.device), [spans for _, spans in encoded])
        return out

    def score_steps(self, problem: str, steps: Sequence[str]) -> list[float]:
        return self.score_batch([(problem, steps)])[0]


class PRMScorer(_StepScorer):
    """`score_steps(problem, steps)`: the PRM's probability that each step is good."""

    def __init__(self, model_dir: str | Path, device: str = "cpu", head: str | None = None):
        """`head="generative"` reads any causal LM in `model_dir` as an uncalibrated generative
        PRM (scale 1, bias 0): it ranks steps and solutions as a PRM calibrated from that
        backbone would, since a fitted bias or positive scale cannot change a ranking."""
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.head = _load_head(model_dir, self.tok.eos_token_id, head).to(device).eval()
        self.kind = self.head.kind
        self.device = device

    def _score(self, ids, mask, spans) -> list[list[float]]:
        flat = iter(torch.sigmoid(self.head(ids, mask, spans)).cpu().tolist())
        return [[next(flat) for _ in step_spans] for step_spans in spans]


class LikelihoodScorer(_StepScorer):
    """A reference with no training: a step's score is the policy's geometric-mean token
    probability over the step (`mean`) or its least likely token (`min`); the step's end is
    read as `token_logprobs` reads it (`raw_separator`: as is, to measure that bug)."""

    def __init__(self, model_dir: str | Path, reduce: str = "mean", device: str = "cpu", raw_separator: bool = False):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if reduce not in ("mean", "min"):
            raise ValueError(f"likelihood reduce must be mean or min, got {reduce!r}")
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).to(device).eval()
        self.reduce, self.device = reduce, device
        self.eos_id = None if raw_separator else self.tok.eos_token_id

    def _score(self, ids, mask, spans) -> list[list[float]]:
        logits = self.model(input_ids=ids, attention_mask=mask).logits
        token_lp = token_logprobs(logits, ids, spans, self.eos_id).cpu()
        reduce = torch.mean if self.reduce == "mean" else torch.min
        return [[math.exp(reduce(token_lp[i, a - 1:b - 1]).item()) for a, b in step_spans]
                for i, step_spans in enumerate(spans)]


def evaluate_prm(scorer: PRMScorer, trees: Sequence, threshold: float = 0.5,
                 reference: dict[str, bool] | None = None) -> dict:
    """The PRM against reference step labels on held-out trees: the built-in oracle's on the
    steps up to each solution's first error (where step- and prefix-correct agree), or
    `reference` (node id -> right; an imported file's human labels) on the steps it rates.
    Step accuracy, recall of wrong steps, ProcessBench's metric over the finished solutions
    (accuracy of the predicted first error on erroneous and on correct ones, and their
    harmonic mean, `first_error_f1`), chance (the share of the majority label) for scale,
    the step AUC, and right-over-wrong sibling accuracy."""
    from qstar_dagster.labeling.agreement import agreement
    from qstar_dagster.labeling.oracle import oracle_labels
    from qstar_dagster.labeling.pipeline import oracle_region, solutions_of

    if reference is None:
        truth = oracle_labels(trees)
        region = oracle_region(trees, {n: p for n, (_, p) in truth.items()})
        reference = {n: truth[n][0] for n in region}
    items, ids = [], []
    for t in trees:
        for leaf in t.leaves():
            path = t.path(leaf)[1:]
            if path:
                items.append((t.problem.problem, [n.text for n in path]))
                ids.append([n.node_id for n in path])
    scores = {}
    for path_ids, s in zip(ids, scorer.score_batch(items)):
        scores.update(zip(path_ids, s))
    # every scored step: the predicted first error may lie beyond the reference's region
    labels = {n: s >= threshold for n, s in scores.items()}
    a = agreement(labels, reference, solutions_of(trees))
    positive = sum(reference.values()) / len(reference) if reference else None
    return {"n_steps": a.n_steps, "step_accuracy": a.accuracy, "negative_recall": a.negative_recall,
            "negative_precision": a.negative_precision, "first_error_f1": a.first_error_f1,
            "first_error_accuracy_erroneous": a.first_error_accuracy_erroneous,
            "first_error_accuracy_correct": a.first_error_accuracy_correct, "n_solutions": a.n_solutions,
            "chance_accuracy": None if positive is None else max(positive, 1 - positive),
            "step_auc": step_auc([(scores[n], ok) for n, ok in reference.items() if n in scores]),
            **sibling_accuracy(trees, scores, reference)}


def step_auc(scored: Sequence[tuple[float, bool]]) -> float | None:
    """The chance that a right step scores above a wrong one, over all steps (ties half):
    the ROC AUC, which, unlike accuracy at one threshold, a PRM cannot reach by calling
    every step right when most are. None without both kinds."""
    ordered = sorted(scored, key=lambda x: x[0])
    right = sum(ok for _, ok in ordered)
    wrong = len(ordered) - right
    if not right or not wrong:
        return None
    rank_sum, i = 0.0, 0
    while i < len(ordered):  # tied scores share their mean rank
        j = i
        while j < len(ordered) and ordered[j][0] == ordered[i][0]:
            j += 1
        rank_sum += sum(ok for _, ok in ordered[i:j]) * (i + j + 1) / 2
        i = j
    return (rank_sum - right * (right + 1) / 2) / (right * wrong)


def sibling_accuracy(trees: Sequence, scores: dict[str, float], reference: dict[str, bool]) -> dict:
    """How often the PRM scores a right next step above a wrong one from the same prefix.
    Step accuracy can be high for a PRM that only learned which problems are hard; ranking
    the candidates for one prefix, which best-of-N and PRM-guided search rely on, cannot
    be (0.5 is chance; ties count half)."""
    wins = pairs = 0.0
    for t in trees:
        children: dict[str, list[str]] = {}
        for n in t.nodes.values():
            if n.parent_id is not None and n.node_id in reference and n.node_id in scores:
                children.setdefault(n.parent_id, []).append(n.node_id)
        for kids in children.values():
            right = [scores[k] for k in kids if reference[k]]
            wrong = [scores[k] for k in kids if not reference[k]]
            for r in right:
                for w in wrong:
                    pairs += 1
                    wins += 1.0 if r > w else 0.5 if r == w else 0.0
    return {"sibling_pairs": int(pairs), "sibling_accuracy": wins / pairs if pairs else None}
