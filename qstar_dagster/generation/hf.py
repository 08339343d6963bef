"""Transformers backend: batched sampling with a KV cache, on CPU or GPU.

Why not `model.generate`: it cannot share one prompt's prefill among that prompt's `n`
samples, and it keeps finished rows in the batch until the longest one ends. Here each
prompt is prefilled once, its cache is repeated for its samples, and rows that hit a stop
string or end-of-sequence leave the batch at once, so a batch of short steps costs what
its tokens cost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from qstar_dagster.generation.base import (
    Completion,
    SamplingParams,
    cut_at_stop,
    cut_at_stop_string,
)
from qstar_dagster.generation.shared_prefix import shared_prefix_attention, shared_prefix_cache

log = logging.getLogger(__name__)


class ModelNotFoundError(FileNotFoundError):
    pass


def load_causal_lm(name_or_path: str, device: str = "cpu", dtype: torch.dtype | None = None):
    """A causal LM and its tokenizer from a local path, or a Hugging Face id already in the
    local cache. Never downloads: a missing model is an immediate, clear error."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(name_or_path).expanduser()
    kwargs = {} if local.exists() else {"local_files_only": True}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(local) if local.exists() else name_or_path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            str(local) if local.exists() else name_or_path, dtype=dtype or torch.float32, **kwargs
        )
    except OSError as e:
        raise ModelNotFoundError(
            f"model {name_or_path!r} is neither a local directory nor in the Hugging Face cache "
            f"({type(e).__name__}: {str(e).splitlines()[0]}). Fix: pass a path to a saved model, or "
            "download it first on a machine with network (huggingface-cli download ...)"
        ) from None
    return model.to(device).eval(), tokenizer


def resolve_model_dir(name_or_path: str) -> Path:
    """The directory holding a model's files: the path itself, or the snapshot of a Hugging
    Face id in the local cache (never downloaded)."""
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        return local.resolve()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name_or_path, local_files_only=True))
    except Exception as e:  # noqa: BLE001  (hub raises several kinds for "not cached")
        raise ModelNotFoundError(
            f"model {name_or_path!r} is neither a local directory nor in the Hugging Face cache "
            f"({type(e).__name__}). Fix: pass a path to a saved model, or download it first on a machine "
            "with network (huggingface-cli download ...)"
        ) from None


class TransformersGenerator:
    name = "transformers"

    def __init__(self, model_or_path, tokenizer=None, device: str = "cpu", dtype: torch.dtype | None = None,
                 max_batch_sequences: int = 512, progress_every_s: float = 30.0):
        if isinstance(model_or_path, (str, Path)):
            model_or_path, tokenizer = load_causal_lm(str(model_or_path), device, dtype)
        if tokenizer is None:
            raise ValueError("pass the tokenizer along with a model object")
        self.model, self.tokenizer = model_or_path.eval(), tokenizer
        self.device = torch.device(device)
        self.max_batch_sequences = max_batch_sequences
        self.progress_every_s = progress_every_s
        self.eos_ids = _eos_ids(self.model, tokenizer)
        self._piece_table: list[str] | None = None
        self._stop_tables: dict[tuple[str, ...], torch.Tensor] = {}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (self.eos_ids or [0])[0]

    @torch.inference_mode()
    def generate(self, prompts: Sequence[str], params: SamplingParams,
                 prompt_seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        """`params.n` completions per prompt. Sampling draws from one generator seeded with
        `params.seed` for the whole call; with `prompt_seeds` (one per prompt), each prompt's
        samples draw from a generator of its own, so what a prompt gets does not depend on
        the other prompts it is batched with (the server batches requests this way)."""
        if prompt_seeds is not None and len(prompt_seeds) != len(prompts):
            raise ValueError(f"{len(prompt_seeds)} prompt seeds for {len(prompts)} prompts")
        rng = torch.Generator(device="cpu").manual_seed(params.seed)
        per_chunk = max(1, self.max_batch_sequences // params.n)
        out: list[list[Completion]] = []
        started, last_log, n_tokens = time.monotonic(), time.monotonic(), 0
        for i in range(0, len(prompts), per_chunk):
            gens = None if prompt_seeds is None else [
                torch.Generator(device="cpu").manual_seed(int(s)) for s in prompt_seeds[i:i + per_chunk]]
            chunk = self._generate_chunk(list(prompts[i : i + per_chunk]), params, gens or rng)
            out.extend(chunk)
            n_tokens += sum(c.n_tokens for cs in chunk for c in cs)
            if time.monotonic() - last_log > self.progress_every_s:
                rate = n_tokens / (time.monotonic() - started)
                left = (len(prompts) - len(out)) / max(1, len(out)) * (time.monotonic() - started)
                log.info("generated %d/%d prompts, %.0f tokens/s, ETA %.0fs", len(out), len(prompts), rate, left)
                last_log = time.monotonic()
        return out

    def _pieces(self) -> list[str]:
        """Each token id's text, decoded once per generator, for spotting stop strings as
        tokens arrive (decoding one token per row per step was a tenth of the time)."""
        if self._piece_table is None:
            self._piece_table = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))],
                                                            skip_special_tokens=True)
        return self._piece_table

    def _stop_table(self, stop: tuple[str, ...]) -> torch.Tensor:
        """[vocab] bool: whether a token's own text contains a stop string."""
        if self._stop_tables.get(stop) is None:
            self._stop_tables[stop] = torch.tensor([any(s in p for s in stop) for p in self._pieces()],
                                                   device=self.device)
        return self._stop_tables[stop]

    def _generate_chunk(self, prompts: list[str], params: SamplingParams, rng: torch.Generator):
        tok = self.tokenizer
        enc = [tok(p, add_special_tokens=True)["input_ids"] for p in prompts]
        width = max(len(e) for e in enc)
        ids = torch.full((len(enc), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(enc), width), dtype=torch.long)
        for r, e in enumerate(enc):  # left padding: every row's last token is at the same column
            ids[r, width - len(e):] = torch.tensor(e)
            mask[r, width - len(e):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)

        with shared_prefix_attention(self.model) as shared:
            cache = shared_prefix_cache(self.model, mask, params.max_new_tokens) if shared else None
            return self._decode(prompts, params, rng, ids, mask, positions, cache)

    def _decode(self, prompts, params, rng, ids, mask, positions, cache):
        tok = self.tokenizer
        # Prefill once per prompt. Its n samples then share the prompt's keys and values (a
        # shared-prefix cache) or, for models that cannot use one, each get a copy.
        shared = cache is not None
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         past_key_values=cache)
        cache, logits = out.past_key_values, out.logits[:, -1, :].float()
        n = params.n
        if n > 1:
            cache.batch_repeat_interleave(n)
            logits = logits.repeat_interleave(n, 0)
            mask = mask.repeat_interleave(n, 0)
            positions = positions.repeat_interleave(n, 0)
        next_pos = positions[:, -1:] + 1

        rows = len(prompts) * n
        alive = torch.arange(rows, device=self.device)  # original row of each batch row
        finish: list[str | None] = [None] * rows
        history: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (alive, token, logprob) per step
        eos = torch.tensor(self.eos_ids or [-1], device=self.device)
        # One-character stops (a newline ends a step) are found per token, in one tensor op;
        # longer ones may span tokens and need each row's recent text.
        stop_in_token = self._stop_table(params.stop) if params.stop else None
        texts = [""] * rows if any(len(s) > 1 for s in params.stop) else None
        pieces = self._pieces() if texts is not None else None
        tail = max((len(s) for s in params.stop), default=0) + 32
        for step in range(params.max_new_tokens):
            logprobs = torch.log_softmax(logits, -1)
            chosen = _sample(logits, params, rng, alive, n).to(self.device)
            history.append((alive, chosen, logprobs.gather(1, chosen[:, None])[:, 0]))
            done = torch.isin(chosen, eos)
            if stop_in_token is not None:
                done |= stop_in_token[chosen]
            done_list = done.tolist()
            if texts is not None:
                for b, (row, t) in enumerate(zip(alive.tolist(), chosen.tolist())):
                    if not done_list[b]:
                        texts[row] = texts[row][-tail:] + pieces[t]
                        done_list[b] = cut_at_stop(texts[row], params.stop)[1]
            keep = [b for b, d in enumerate(done_list) if not d]
            for b, d in enumerate(done_list):
                if d:
                    finish[alive[b].item()] = "stop"
            if not keep or step == params.max_new_tokens - 1:
                break
            if len(keep) < len(alive):  # finished rows leave the batch
                idx = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(idx)
                alive, chosen, mask, next_pos = alive[idx], chosen[idx], mask[idx], next_pos[idx]
            # The shared-prefix cache knows each prompt's padding itself: no mask to build per step.
            if not shared:
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = self.model(input_ids=chosen[:, None], attention_mask=None if shared else mask,
                             position_ids=next_pos, past_key_values=cache, use_cache=True)
            cache, logits = out.past_key_values, out.logits[:, -1, :].float()
            next_pos = next_pos + 1

        tokens: list[list[int]] = [[] for _ in range(rows)]
        lps: list[list[float]] = [[] for _ in range(rows)]
        for step_alive, step_tokens, step_lps in history:
            for row, t, lp in zip(step_alive.tolist(), step_tokens.tolist(), step_lps.tolist()):
                tokens[row].append(t)
                lps[row].append(lp)
        results = []
        for row in range(rows):
            text = tok.decode([t for t in tokens[row] if t not in self.eos_ids], skip_special_tokens=True)
            text, stop_string = cut_at_stop_string(text, params.stop)
            results.append(Completion(
                text=text, n_tokens=len(tokens[row]), logprob=float(sum(lps[row])),
                finish_reason=finish[row] or "length",
                token_logprobs=lps[row] if params.logprobs else None,
                token_ids=tokens[row] if params.logprobs else None,
                stop_string=stop_string if finish[row] == "stop" else None,
            ))
        return [results[i * n:(i + 1) * n] for i in range(len(prompts))]


def _sample(logits: torch.Tensor, params: SamplingParams, rng: torch.Generator | list[torch.Generator],
            alive: torch.Tensor, n: int) -> torch.Tensor:
    """One token per row. `rng` is one generator, or one per prompt (rows `alive`, n per
    prompt, in order): each prompt's rows then draw from its own, as they would alone."""
    if params.temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / params.temperature, -1).cpu()
    if params.top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > params.top_p  # keep the smallest set reaching top_p
        sorted_p[drop] = 0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    if isinstance(rng, torch.Generator):
        return torch.multinomial(probs, 1, generator=rng)[:, 0]
    owner = (alive.cpu() // n).tolist()
    chosen = torch.empty(len(owner), dtype=torch.long)
    start = 0
    while start < len(owner):  # a prompt's rows stay contiguous as rows finish
        end = start
        while end < len(owner) and owner[end] == owner[start]:
            end += 1
        chosen[start:end] = torch.multinomial(probs[start:end], 1, generator=rng[owner[start]])[:, 0]
        start = end
    return chosen


def _eos_ids(model, tokenizer) -> list[int]:
    eos = getattr(model.generation_config, "eos_token_id", None) if model.generation_config else None
    eos = eos if eos is not None else tokenizer.eos_token_id
    return [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
