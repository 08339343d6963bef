"""Process reward models: a step scorer on top of a causal LM's backbone.

The model is transformers' token-classification head with one logit, read at the last
token of each step. Each step is tokenized on its own (prompt, then step + separator), so
the position is exact for any tokenizer, including ones that would merge a separator with
its neighbours. Training is transformers' `Trainer` with binary cross-entropy on the logit:
hard labels (0/1, the cross-entropy of a two-class head) or soft labels (the Monte Carlo
fraction, as Math-Shepherd's soft variant).

Datasets are read in TRL's stepwise-supervision format (`prompt`, `completions`, `labels`,
here with an optional `soft_labels`), which is what users' PRM datasets look like.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from qstar_dagster.training.policy import n_steps
from qstar_dagster.training.sft import log_trainer_progress

log = logging.getLogger(__name__)

PRM_SEPARATOR = "\n"


@dataclass(frozen=True)
class PRMTrainSpec:
    target: str = "hard"  # hard (0/1 labels) or soft (Monte Carlo fractions)
    epochs: float = 3.0
    steps: int | None = None  # overrides epochs
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if self.target not in ("hard", "soft"):
            raise ValueError(f"PRM target must be hard or soft, got {self.target!r}")


def encode_steps(tok, prompt: str, steps: Sequence[str], separator: str = PRM_SEPARATOR) -> tuple[list[int], list[int]]:
    """(input ids, the index of each step's last token)."""
    ids = tok(prompt + separator, add_special_tokens=False)["input_ids"]
    positions = []
    for s in steps:
        ids = ids + tok(s + separator, add_special_tokens=False)["input_ids"]
        positions.append(len(ids) - 1)
    return ids, positions


def _targets(row: dict, target: str) -> list[float] | None:
    if target == "soft":
        soft = row.get("soft_labels")
        if not soft or any(v is None for v in soft):
            return None  # this labeler gave no fraction: the row cannot teach a soft PRM
        return [float(v) for v in soft]
    return [float(bool(v)) for v in row["labels"]]


class _Collator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[dict]) -> dict:
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), self.pad_id)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        targets = torch.full((len(batch), width), -1.0)  # -1: no step ends here
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            mask[i, :n] = 1
            for pos, t in zip(b["positions"], b["targets"]):
                targets[i, pos] = t
        return {"input_ids": ids, "attention_mask": mask, "labels": targets}


def _trainer_class():
    from transformers import Trainer

    class StepTrainer(Trainer):
        """BCE on the head's logit at the positions that end a step."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            targets = inputs.pop("labels")
            out = model(**inputs)
            logits = out.logits.squeeze(-1)
            where = targets >= 0
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[where], targets[where])
            return (loss, out) if return_outputs else loss

    return StepTrainer


def train_prm(base_dir: str | Path, rows: Sequence[dict], out_dir: Path, spec: PRMTrainSpec = PRMTrainSpec()) -> dict:
    """Train a PRM from `base_dir` (a causal LM checkpoint) on stepwise rows; save it with its
    tokenizer to `out_dir`."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer, TrainingArguments

    tok = AutoTokenizer.from_pretrained(base_dir)
    examples = []
    for r in rows:
        targets = _targets(r, spec.target)
        if targets is None:
            continue
        ids, positions = encode_steps(tok, r["prompt"], r["completions"])
        examples.append({"input_ids": ids, "positions": positions, "targets": targets})
    if not examples:
        raise ValueError(f"no rows with {spec.target} labels to train a PRM on")
    torch.manual_seed(spec.seed)
    model = AutoModelForTokenClassification.from_pretrained(base_dir, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    args = TrainingArguments(
        output_dir=str(out_dir / "trainer"),
        max_steps=n_steps(spec.steps, spec.epochs, len(examples), spec.batch_size),
        per_device_train_batch_size=spec.batch_size,
        learning_rate=spec.lr, warmup_steps=spec.warmup, lr_scheduler_type="cosine", logging_steps=25,
        save_strategy="no", report_to=[], seed=spec.seed, use_cpu=not torch.cuda.is_available(),
        remove_unused_columns=False, disable_tqdm=True, dataloader_num_workers=0,
    )
    trainer = _trainer_class()(model=model, args=args, train_dataset=examples, data_collator=_Collator(tok.pad_token_id))
    log_trainer_progress(trainer, "prm")
    result = trainer.train()
    losses = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return {"final_loss": losses[-1][1] if losses else result.training_loss, "train_seconds": result.metrics["train_runtime"],
            "n_train_examples": len(examples), "n_labeled_steps": sum(len(e["targets"]) for e in examples),
            "loss_curve": losses, "config": asdict(spec)}


class PRMScorer:
    """`score_steps(problem, steps)`: the PRM's probability that each step is good."""

    def __init__(self, model_dir: str | Path, device: str = "cpu"):
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForTokenClassification.from_pretrained(model_dir).to(device).eval()
        self.device = device

    @torch.no_grad()
    def score_batch(self, items: Sequence[tuple[str, Sequence[str]]], batch_size: int = 64) -> list[list[float]]:
        out = []
        for start in range(0, len(items), batch_size):
            encoded = [encode_steps(self.tok, p, s) for p, s in items[start:start + batch_size]]
            width = max(len(ids) for ids, _ in encoded)
            ids = torch.full((len(encoded), width), self.tok.pad_token_id)
            mask = torch.zeros_like(ids)
            for i, (seq, _) in enumerate(encoded):  # right padding: positions stay as encoded
                ids[i, : len(seq)] = torch.tensor(seq)
                mask[i, : len(seq)] = 1
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits.squeeze(-1)
            probs = torch.sigmoid(logits.float()).cpu()
            out += [[probs[i, p].item() for p in positions] for i, (_, positions) in enumerate(encoded)]
        return out

    def score_steps(self, problem: str, steps: Sequence[str]) -> list[float]:
        return self.score_batch([(problem, steps)])[0]


def evaluate_prm(scorer: PRMScorer, trees: Sequence, threshold: float = 0.5) -> dict:
    """The PRM against the built-in oracle on held-out trees: step accuracy on the steps up
    to each solution's first error (where step- and prefix-correct agree), recall of wrong
    steps, ProcessBench first-error F1 over the finished solutions, and chance (the share
    of the majority label) for scale."""
    from qstar_dagster.labeling.agreement import agreement
    from qstar_dagster.labeling.oracle import oracle_labels
    from qstar_dagster.labeling.pipeline import oracle_region, solutions_of

    truth = oracle_labels(trees)
    region = oracle_region(trees, {n: p for n, (_, p) in truth.items()})
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
    reference = {n: truth[n][0] for n in region}
    labels = {n: scores[n] >= threshold for n in region if n in scores}
    a = agreement(labels, reference, solutions_of(trees))
    positive = sum(reference.values()) / len(reference) if reference else None
    return {"n_steps": a.n_steps, "step_accuracy": a.accuracy, "negative_recall": a.negative_recall,
            "negative_precision": a.negative_precision, "first_error_f1": a.first_error_f1,
            "chance_accuracy": None if positive is None else max(positive, 1 - positive),
            **sibling_accuracy(trees, scores, reference)}


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
