"""Train the built-in base policy from scratch on reference solutions, and measure it.

Pure core: plain torch over `Problem`s; the Dagster asset (issue 3) wraps it.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from qstar_dagster.generation.base import SamplingParams
from qstar_dagster.generation.hf import TransformersGenerator
from qstar_dagster.tasks.grading import answers_match, extract_answer
from qstar_dagster.tasks.problem import Problem
from qstar_dagster.training.charlm import char_tokenizer, tiny_llama

log = logging.getLogger(__name__)


def policy_prompt(problem: str) -> str:
    """What the policy is conditioned on; its steps follow, one per line."""
    return f"{problem}\n"


@dataclass(frozen=True)
class BasePolicyConfig:
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    steps: int = 1700
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 100
    seed: int = 0
    threads: int | None = None


def train_base_policy(train: Sequence[Problem], out_dir: Path, cfg: BasePolicyConfig = BasePolicyConfig()) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    tok = char_tokenizer()
    model = tiny_llama(tok, cfg.hidden, cfg.layers, cfg.heads, seed=cfg.seed).train()
    examples = []
    for p in train:
        prompt = tok(policy_prompt(p.problem))["input_ids"]
        target = tok(p.reference_solution)["input_ids"] + [tok.eos_token_id]
        examples.append((prompt + target, len(prompt)))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / cfg.warmup)
                                              * 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.steps))))
    g = torch.Generator().manual_seed(cfg.seed)
    started, losses = time.monotonic(), []
    for step in range(cfg.steps):
        idx = torch.randint(len(examples), (cfg.batch_size,), generator=g).tolist()
        batch = [examples[i] for i in idx]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), tok.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        for r, (seq, n_prompt) in enumerate(batch):
            ids[r, : len(seq)] = torch.tensor(seq)
            labels[r, n_prompt: len(seq)] = torch.tensor(seq[n_prompt:])  # loss on the solution only
        loss = model(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % 100 == 0:
            rate = (step + 1) / (time.monotonic() - started)
            log.info("step %d/%d loss %.3f, %.1f steps/s, ETA %.0fs", step + 1, cfg.steps,
                     sum(losses[-100:]) / 100, rate, (cfg.steps - step - 1) / rate)
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return {"final_loss": sum(losses[-100:]) / min(100, len(losses)), "train_seconds": time.monotonic() - started,
            "n_parameters": sum(p.numel() for p in model.parameters()), "config": asdict(cfg)}


def evaluate_policy(gen: TransformersGenerator, problems: Sequence[Problem], k: int = 8, seed: int = 0,
                    max_new_tokens: int = 96) -> dict:
    """Greedy accuracy, pass@k and majority@k (temperature 1) on `problems`."""
    prompts = [policy_prompt(p.problem) for p in problems]
    greedy = gen.generate(prompts, SamplingParams(n=1, temperature=0, max_new_tokens=max_new_tokens))
    sampled = gen.generate(prompts, SamplingParams(n=k, temperature=1.0, max_new_tokens=max_new_tokens, seed=seed))
    g_ok = p_ok = m_ok = 0
    for p, [g1], samples in zip(problems, greedy, sampled):
        g_ok += answers_match(extract_answer(g1.text), p.reference_answer)
        answers = [extract_answer(c.text) for c in samples]
        p_ok += any(answers_match(a, p.reference_answer) for a in answers)
        votes = Counter(a for a in answers if a is not None)
        m_ok += bool(votes) and answers_match(votes.most_common(1)[0][0], p.reference_answer)
    n = len(problems)
    return {"greedy": g_ok / n, f"pass_at_{k}": p_ok / n, f"majority_at_{k}": m_ok / n, "n": n}
