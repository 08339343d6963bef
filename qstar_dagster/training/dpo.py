"""DPO and step-DPO: TRL's `DPOTrainer` on (prompt, chosen, rejected) pairs, the starting
checkpoint as reference; for step-DPO the prompt is the solution so far and chosen /
rejected are one next step each. Saves a standard causal-LM checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from qstar_dagster.spec import option
from qstar_dagster.training.sft import log_trainer_progress, n_steps

# Bumped when the DPO trainer's output changes for the same inputs; part of the checkpoint's
# id and the dpo_policy asset's code version. 2: the trainer's stand-in end of sequence no
# longer leaks into the checkpoint.
DPO_REVISION = 2


@dataclass(frozen=True)
class DPOSpec:
    epochs: float = option(1.0, "passes over the dataset")
    steps: int | None = option(None, "optimizer steps; unset: epochs over the dataset")
    batch_size: int = option(16, "pairs per step")
    lr: float = option(1e-5, "learning rate")
    beta: float = option(0.1, "DPO's beta: how far from the reference policy the loss lets it move")
    # DPO alone may lower the likelihood of both sides of pairs that differ in a digit or two.
    sft_weight: float = option(1.0, "weight of an NLL term on the chosen side (RPO); 0: plain DPO")
    # TRL turns it on by default, to fit large models in memory; for the built-in models,
    # which fit many times over, recomputing activations in the backward pass only costs time.
    gradient_checkpointing: bool = option(False, "recompute activations to save memory: on for a large model on "
                                          "a GPU")
    seed: int = option(0, "seed of the batches")


def train_dpo(base_dir: str | Path, rows: Sequence[dict], out_dir: Path, spec: DPOSpec = DPOSpec(),
              completion_end: str | None = None) -> dict:
    """`rows`: {prompt, chosen, rejected}; the reference model is the starting checkpoint.

    TRL ends every plain-text completion with the end-of-sequence token, which is right for
    whole solutions and wrong for one step (the policy would learn to stop after a step).
    For step pairs `completion_end` is the step separator that a step ends with where the
    solution goes on: TRL is handed a copy of the tokenizer whose end-of-sequence text is that
    separator, so it appends nothing there; a step that ends bare is a solution's last, and
    gets the real end of sequence. The checkpoint is saved with the real tokenizer."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(base_dir)
    trl_tok, sides = tok, ("chosen", "rejected")
    final = [(False, False)] * len(rows)  # (chosen, rejected) ends the solution
    if completion_end is not None:
        trl_tok = AutoTokenizer.from_pretrained(base_dir)
        trl_tok.eos_token = completion_end
        final = [tuple(not r[side].endswith(completion_end) for side in sides) for r in rows]
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    # A last step goes to TRL with the separator too (so it appends nothing), swapped for the
    # real end of sequence once tokenized, below.
    data = Dataset.from_list([{"prompt": r["prompt"], **{side: r[side] + (completion_end if f else "")
                                                          for side, f in zip(sides, ends)}}
                              for r, ends in zip(rows, final)])
    args = DPOConfig(
        output_dir=str(out_dir / "trainer"), max_steps=n_steps(spec.steps, spec.epochs, len(rows), spec.batch_size),
        per_device_train_batch_size=spec.batch_size, learning_rate=spec.lr, beta=spec.beta,
        loss_type=["sigmoid", "sft"] if spec.sft_weight else ["sigmoid"],
        loss_weights=[1.0, spec.sft_weight] if spec.sft_weight else None, logging_steps=10, save_strategy="no", report_to=[], seed=spec.seed,
        use_cpu=not torch.cuda.is_available(), disable_tqdm=True, max_length=512,
        gradient_checkpointing=spec.gradient_checkpointing,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=trl_tok)
    if any(any(f) for f in final):
        trainer.train_dataset = _end_solutions(trainer.train_dataset, final, tok, completion_end)
    log_trainer_progress(trainer, "dpo")
    result = trainer.train()
    history = trainer.state.log_history
    # TRL writes its tokenizer's end-of-sequence id into the model's configs; with the step
    # separator standing in for it, generation would stop after every step. Put the real one back.
    for cfg in (model.config, model.generation_config):
        cfg.eos_token_id, cfg.pad_token_id = tok.eos_token_id, tok.pad_token_id
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    last = next((h for h in reversed(history) if "loss" in h), {})
    return {"final_loss": last.get("loss", result.training_loss), "train_seconds": result.metrics["train_runtime"],
            "n_train_examples": len(rows),
            "reward_accuracy": last.get("rewards/accuracies"), "reward_margin": last.get("rewards/margins"),
            "loss_curve": [(h["step"], h["loss"]) for h in history if "loss" in h], "config": asdict(spec)}


def _end_solutions(tokenized, final: Sequence[tuple[bool, bool]], tok, separator: str):
    """Swap the separator that ends each solution's last step for the end-of-sequence token."""
    sep = tok(separator, add_special_tokens=False)["input_ids"]
    if len(tokenized) != len(final):
        raise RuntimeError(f"TRL kept {len(tokenized)} of {len(final)} step pairs; cannot match their ends")

    def end(example: dict, i: int) -> dict:
        for side, is_final in zip(("chosen_ids", "rejected_ids"), final[i]):
            ids = example[side]
            if is_final:
                if ids[len(ids) - len(sep):] != sep:
                    raise ValueError(f"step pair {i}: its {side[:-4]} step does not tokenize to end with the "
                                     f"separator {separator!r}, so its end cannot be marked")
                example[side] = ids[:len(ids) - len(sep)] + [tok.eos_token_id]
        return example

    return tokenized.map(end, with_indices=True)
