"""Shared-prefix attention for the transformers backend: n samples of a prompt read the
prompt's keys and values once.

Tree search asks for n continuations of each node. Repeating the prompt's KV cache n times
(what `model.generate(num_return_sequences=n)` does) makes every decode step read n copies
of the prompt from memory, and on a CPU that reading is most of the step. Here the cache
keeps one copy of each prompt's keys and values plus each sample's own generated ones,
and attention is computed in two parts, merged exactly with their softmax normalizers:

    queries of the n samples of prompt p  x  keys of prompt p      (one batched matmul per prompt)
    query of sample r                     x  keys sample r generated

The attention function is registered with transformers' AttentionInterface and set on the
model only for the length of a generate call (`shared_prefix_attention`). It handles the
decode steps; everything else (prefill, training) goes to the standard SDPA function.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.cache_utils import DynamicCache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "qstar_shared_prefix"


class SharedKV:
    """What a shared-prefix layer hands the attention function at a decode step."""

    def __init__(self, layer: SharedPrefixLayer):
        self.layer = layer


class SharedPrefixLayer(DynamicLayer):
    def __init__(self, prompt_mask: torch.Tensor, capacity: int):
        super().__init__()
        self.prompt_mask = prompt_mask.bool()  # [prompts, prompt length]; False at left padding
        self.capacity = capacity  # generated tokens the buffers have room for
        self.n = 1
        self.owner = self.slot = None  # per row: its prompt, and which of that prompt's n samples it is
        self.gen_k = self.gen_v = None
        self.gen_len = 0

    def lazy_initialization(self, key_states, value_states) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:  # prefill: the prompts' keys and values, once each
            self.lazy_initialization(key_states, value_states)
            self.keys, self.values = key_states, value_states
            return key_states, value_states
        if self.gen_k is None:
            rows, heads, _, dim = key_states.shape
            self.gen_k = key_states.new_empty(rows, heads, self.capacity, dim)
            self.gen_v = value_states.new_empty(rows, heads, self.capacity, value_states.shape[-1])
            if self.owner is None:
                self.owner = torch.arange(rows, device=key_states.device)
                self.slot = torch.zeros_like(self.owner)
        if self.gen_len + key_states.shape[-2] > self.gen_k.shape[-2]:
            raise RuntimeError("shared-prefix cache: more tokens than max_new_tokens")
        end = self.gen_len + key_states.shape[-2]
        self.gen_k[:, :, self.gen_len:end] = key_states
        self.gen_v[:, :, self.gen_len:end] = value_states
        self.gen_len = end
        return SharedKV(self), None

    def prompt_bias(self, kv_heads: int, dtype: torch.dtype) -> torch.Tensor:
        """[prompts * kv heads, 1, prompt len]: 0 on prompt tokens, -inf on padding. Built once."""
        if getattr(self, "_bias", None) is None:
            bias = torch.zeros(self.prompt_mask.shape, dtype=dtype, device=self.prompt_mask.device)
            bias = bias.masked_fill(~self.prompt_mask, float("-inf"))
            self._bias = bias.repeat_interleave(kv_heads, 0)[:, None, :]
        return self._bias

    def get_seq_length(self) -> int:
        return (self.keys.shape[-2] if self.is_initialized else 0) + self.gen_len

    def batch_repeat_interleave(self, repeats: int) -> None:
        # The prompt stays single; rows only learn which prompt and sample they are.
        prompts = self.keys.shape[0]
        self.n = repeats
        self.owner = torch.arange(prompts, device=self.device).repeat_interleave(repeats)
        self.slot = torch.arange(repeats, device=self.device).repeat(prompts)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.owner is None:  # one sample per prompt and no decode step yet: row i is prompt i
            self.owner = torch.arange(self.keys.shape[0], device=self.device)
            self.slot = torch.zeros_like(self.owner)
        self.owner, self.slot = self.owner[indices], self.slot[indices]
        if self.gen_k is not None:
            self.gen_k, self.gen_v = self.gen_k[indices], self.gen_v[indices]


def shared_prefix_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    if not isinstance(key, SharedKV):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    # Few, fused ops: at these sizes the cost of a decode step is mostly per-op overhead.
    layer = key.layer
    rows, heads, q_len, dim = query.shape
    pk, pv = layer.keys, layer.values  # [prompts, kv heads, prompt len, dim]
    prompts, kv_heads, prompt_len = pk.shape[0], pk.shape[1], pk.shape[2]
    g, n = heads // kv_heads, layer.n  # query heads per kv head (grouped-query attention); samples per prompt
    scale = scaling if scaling is not None else dim ** -0.5
    q = query.reshape(rows, kv_heads, g * q_len, dim)
    grouped = rows == prompts * n  # no sample has finished: rows are still in prompt order

    # Part A: each prompt's keys once, against the queries of all its samples.
    if grouped:
        qp = q.view(prompts, n, kv_heads, g * q_len, dim).transpose(1, 2)
    else:
        qp = query.new_zeros(prompts, kv_heads, n, g * q_len, dim)
        qp[layer.owner, :, layer.slot] = q
    bias = layer.prompt_bias(kv_heads, query.dtype)  # 0 on prompt tokens, -inf on left padding
    scores = torch.baddbmm(bias, qp.reshape(-1, n * g * q_len, dim), pk.reshape(-1, prompt_len, dim).transpose(1, 2),
                           alpha=scale)
    lse_a = torch.logsumexp(scores, -1, keepdim=True)
    out_a = torch.bmm(torch.softmax(scores, -1), pv.reshape(-1, prompt_len, pv.shape[-1]))
    parts = torch.cat([out_a, lse_a], -1).view(prompts, kv_heads, n, g * q_len, -1)
    if grouped:
        parts = parts.transpose(1, 2).reshape(rows, kv_heads, g * q_len, -1)
    else:
        parts = parts[layer.owner, :, layer.slot]  # back to one row per sample
    out_a, lse_a = parts[..., :-1], parts[..., -1:]

    # Part B: each sample's own generated keys (causal within the new tokens when q_len > 1).
    gk, gv = layer.gen_k[:, :, : layer.gen_len], layer.gen_v[:, :, : layer.gen_len]
    scores = (q @ gk.transpose(-1, -2)) * scale
    if q_len > 1:
        causal = torch.ones(q_len, layer.gen_len, dtype=torch.bool, device=q.device).tril(layer.gen_len - q_len)
        scores = scores.view(rows, kv_heads, g, q_len, -1).masked_fill(~causal, float("-inf")).flatten(2, 3)
    lse_b = torch.logsumexp(scores, -1, keepdim=True)
    out_b = torch.softmax(scores, -1) @ gv

    # Exact merge: the weight of part A is its share of the total softmax mass.
    out = torch.lerp(out_b, out_a, torch.sigmoid(lse_a - lse_b))  # [rows, kv heads, g * q_len, dim]
    return out.view(rows, heads, q_len, dim).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, shared_prefix_attention_forward)
AttentionMaskInterface.register(NAME, sdpa_mask)


def shared_prefix_cache(model, prompt_mask: torch.Tensor, max_new_tokens: int) -> DynamicCache | None:
    """A cache for `shared_prefix_attention`, or None where the model's layers are not all
    plain full attention (sliding windows, ...): those use the default cache."""
    cache = DynamicCache(config=model.config)
    if not cache.layers or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    cache.layers = [SharedPrefixLayer(prompt_mask, max_new_tokens) for _ in cache.layers]
    return cache


@contextmanager
def shared_prefix_attention(model):
    """Route the model's attention through the shared-prefix function for one call; models
    that do not use transformers' attention interface (or use another one) are left alone."""
    config = model.config
    previous = getattr(config, "_attn_implementation", None)
    if previous not in ("sdpa", "eager"):
        yield False
        return
    config._attn_implementation = NAME
    try:
        yield True
    finally:
        config._attn_implementation = previous
