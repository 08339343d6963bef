"""Improving the policy on the factory's data, starting from a policy checkpoint:

- RFT: supervised fine-tuning on right, deduplicated solutions (the shared SFT loop);
- DPO / step-DPO: TRL's `DPOTrainer` on (prompt, chosen, rejected) pairs; for step-DPO the
  prompt is the solution so far and chosen / rejected are one next step each.

Both save a standard causal-LM checkpoint (weights and tokenizer), which every backend
loads like the base policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from qstar_dagster.training.sft import FitSpec, encode_pairs, fit_causal_lm


@dataclass(frozen=True)
class RFTSpec:
    steps: int = 200
    batch_size: int = 32
    lr: float = 5e-4
    warmup: int = 20
    seed: int = 0


def train_rft(base_dir: str | Path, rows: Sequence[dict], out_dir: Path, spec: RFTSpec = RFTSpec()) -> dict:
    """`rows`: {prompt, completion} (the RFT dataset's rows)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    fit = FitSpec(steps=spec.steps, batch_size=spec.batch_size, lr=spec.lr, warmup=spec.warmup, seed=spec.seed,
                  eval_every=0)
    summary = fit_causal_lm(model, tok, encode_pairs(tok, [(r["prompt"], r["completion"]) for r in rows]), fit, "rft")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return {**summary, "config": asdict(spec)}


@dataclass(frozen=True)
class DPOSpec:
    steps: int = 100
    batch_size: int = 16
    lr: float = 5e-5
    beta: float = 0.1
    seed: int = 0


def train_dpo(base_dir: str | Path, rows: Sequence[dict], out_dir: Path, spec: DPOSpec = DPOSpec()) -> dict:
    """`rows`: {prompt, chosen, rejected}; the reference model is the starting checkpoint."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(base_dir)
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    data = Dataset.from_list([{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows])
    args = DPOConfig(
        output_dir=str(out_dir / "trainer"), max_steps=spec.steps, per_device_train_batch_size=spec.batch_size,
        learning_rate=spec.lr, beta=spec.beta, logging_steps=10, save_strategy="no", report_to=[], seed=spec.seed,
        use_cpu=not torch.cuda.is_available(), disable_tqdm=True, max_length=512,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    result = trainer.train()
    history = trainer.state.log_history
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    last = next((h for h in reversed(history) if "loss" in h), {})
    return {"final_loss": last.get("loss", result.training_loss), "train_seconds": result.metrics["train_runtime"],
            "n_train_examples": len(rows),
            "reward_accuracy": last.get("rewards/accuracies"), "reward_margin": last.get("rewards/margins"),
            "loss_curve": [(h["step"], h["loss"]) for h in history if "loss" in h], "config": asdict(spec)}
