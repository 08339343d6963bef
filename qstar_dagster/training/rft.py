"""RFT (rejection-sampling fine-tuning): the policy fine-tuned on right, deduplicated
solutions with the shared SFT loop. Saves a standard causal-LM checkpoint (weights and
tokenizer), which every backend loads like the base policy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from qstar_dagster.spec import option
from qstar_dagster.training.sft import FitSpec, encode_pairs, fit_causal_lm, n_steps


@dataclass(frozen=True)
class RFTSpec:
    epochs: float = option(2.0, "passes over the dataset")
    steps: int | None = option(None, "optimizer steps; unset: epochs over the dataset")
    batch_size: int = option(32, "solutions per step")
    # Small: Adam's first steps move every weight by about lr whatever the gradient, and a
    # few hundred self-generated solutions give noisy gradients (2e-4 cost 10 points greedy).
    lr: float = option(3e-5, "peak learning rate (warm-up, then cosine)")
    warmup: int = option(5, "warm-up steps")
    seed: int = option(0, "seed of the batches")


def train_rft(base_dir: str | Path, rows: Sequence[dict], out_dir: Path, spec: RFTSpec = RFTSpec()) -> dict:
    """`rows`: {prompt, completion} (the RFT dataset's rows)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    fit = FitSpec(steps=n_steps(spec.steps, spec.epochs, len(rows), spec.batch_size), batch_size=spec.batch_size,
                  lr=spec.lr, warmup=spec.warmup, seed=spec.seed, eval_every=0)
    summary = fit_causal_lm(model, tok, encode_pairs(tok, [(r["prompt"], r["completion"]) for r in rows]), fit, "rft")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return {**summary, "config": asdict(spec)}
