"""Supervised fine-tuning of a causal LM on (prompt, target) pairs, loss on the target only.

One small torch loop shared by the built-in base policy, the built-in judge and RFT: the
models are tiny and trained on CPU, where a plain loop with seeded batches is both the
fastest and the easiest to make reproducible.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitSpec:
    steps: int
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 100
    seed: int = 0
    eval_every: int = 100  # steps between `on_eval` points; 0 = none


def encode_pairs(tok, pairs: Sequence[tuple[str, str]]) -> list[tuple]:
    """(token ids of prompt + target + end-of-sequence, prompt length)."""
    out = []
    for prompt, target in pairs:
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        t = tok(target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        out.append((p + t, len(p)))
    return out


def encode_pieces(tok, prompt: str, pieces: Sequence[tuple[str, bool]]) -> tuple[list[int], int, tuple[bool, ...]]:
    """One example whose target is `pieces` of text, each trained or not (a practice walk's
    choices are not): (ids of prompt + target + end-of-sequence, prompt length, which target
    tokens are trained). A token belongs to the piece its first character is in; the end of
    sequence is trained."""
    text, untrained, at = "", [], 0
    for piece, trained in pieces:
        if not trained:
            untrained.append((at, at + len(piece)))
        text, at = text + piece, at + len(piece)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = tuple(not any(a <= start < b for a, b in untrained) for start, _ in enc["offset_mapping"]) + (True,)
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    return p + enc["input_ids"] + [tok.eos_token_id], len(p), mask


def epoch_batches(n: int, batch_size: int, seed: int):
    """Seeded batches of indices into `n` examples that go through them in a fresh order each
    epoch (not with replacement), so a large training set is seen once before anything repeats."""
    g = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while True:
        if len(order) < batch_size:
            order += torch.randperm(n, generator=g).tolist()
        idx, order = order[:batch_size], order[batch_size:]
        yield idx


def right_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [B, T] padded on the right, so a sequence's positions stay as encoded, and the
    attention mask."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def lm_batches(examples: list[tuple], spec: FitSpec, pad_id: int):
    """Padded (ids, labels) batches of `encode_pairs` / `encode_pieces` examples, loss on the
    (trained) target tokens only."""
    for idx in epoch_batches(len(examples), spec.batch_size, spec.seed):
        batch = [examples[i] for i in idx]
        ids, _ = right_pad([ex[0] for ex in batch], pad_id)
        labels = torch.full(ids.shape, -100)
        for r, (seq, n_prompt, *trained) in enumerate(batch):
            target = torch.tensor(seq[n_prompt:])
            if trained:
                target[~torch.tensor(trained[0])] = -100
            labels[r, n_prompt: len(seq)] = target
        yield ids, labels


def log_progress(name: str, step: int, steps: int, loss: float, started: float, extra: str = "") -> None:
    """One progress line of a training run (`started`: its time.monotonic() at the start)."""
    rate = step / max(1e-9, time.monotonic() - started)
    log.info("%s: step %d/%d, loss %.3f, %.1f steps/s, ETA %.0fs%s", name, step, steps, loss, rate,
             (steps - step) / rate, extra)


def warmup_cosine(opt, warmup: int, steps: int):
    """Linear warm-up over `warmup` steps, then cosine decay to 0 at `steps`."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / max(1, warmup))
                                             * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, steps)))))


def fit_causal_lm(model, tok, examples: list[tuple[list[int], int]], spec: FitSpec, name: str,
                  on_eval: Callable[[object, object], float] | None = None) -> dict:
    """Train `model` in place with AdamW, linear warm-up then cosine decay; log progress every
    100 steps. Returns the final loss, the loss and `on_eval` curves and the time taken."""
    if not examples:
        raise ValueError(f"{name}: no training examples")
    torch.manual_seed(spec.seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01)
    sched = warmup_cosine(opt, spec.warmup, spec.steps)
    batches = lm_batches(examples, spec, tok.pad_token_id)
    started, losses, curve = time.monotonic(), [], []
    for step in range(1, spec.steps + 1):
        ids, labels = next(batches)
        loss = model(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if on_eval and spec.eval_every and (step % spec.eval_every == 0 or step == spec.steps):
            model.eval()
            curve.append((step, on_eval(model, tok)))
            model.train()
        if step % 100 == 0 or step == spec.steps:
            log_progress(name, step, spec.steps, sum(losses[-100:]) / len(losses[-100:]), started,
                         f", accuracy {curve[-1][1]:.1%}" if curve and curve[-1][0] == step else "")
    model.eval()
    return {
        "final_loss": sum(losses[-100:]) / len(losses[-100:]),
        "train_seconds": time.monotonic() - started,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "n_train_examples": len(examples),
        "loss_curve": [(i + 1, loss) for i, loss in enumerate(losses)],
        "accuracy_curve": curve,
    }


def log_trainer_progress(trainer, name: str) -> None:
    """Make a transformers / TRL `Trainer` report like `fit_causal_lm`: progress lines in this
    package's log (which Dagster's event log shows), in place of the dicts its printer puts on
    stdout when tqdm is off."""
    from transformers import PrinterCallback, TrainerCallback

    class Progress(TrainerCallback):
        started = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.monotonic()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and state.global_step:
                log_progress(name, state.global_step, state.max_steps, float(logs["loss"]), self.started)

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(Progress())


def n_steps(steps: int | None, epochs: float, n_rows: int, batch_size: int) -> int:
    """Optimizer steps: `steps` when given, else `epochs` passes over the rows (datasets from
    a few hundred problems are small: a fixed step count would overfit them many times)."""
    return steps or max(1, math.ceil(epochs * n_rows / batch_size))
