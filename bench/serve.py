"""Benchmark: `qstar serve` under concurrent clients, batching requests against serving them
one at a time (`--no-batching`), side by side in one run.

Each server is a real `qstar serve` subprocess on the same model (the built-in policy's
shape: a 3-layer, 128-wide character Llama, untrained unless --model is given). For
`--seconds` per server, `--clients` threads each send completion requests back to back
with the `openai` client (one prompt, `--max-tokens` tokens, temperature 0.7, a seed of
their own). Printed per server: requests/s, generated tokens/s, p50 and p99 latency, errors.
Last line: JSON.

    python bench/serve.py --clients 16 --seconds 30
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qstar_dagster.training.charlm import char_tokenizer, tiny_llama
from tests.conftest import start_server


def load(url: str, clients: int, seconds: float, max_tokens: int) -> dict:
    latencies: list[float] = []
    tokens = [0]
    errors = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(i: int) -> None:
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
        k = 0
        while time.monotonic() < stop_at:
            t = time.monotonic()
            try:
                r = c.completions.create(model="m", prompt=f"Compute left to right: {i} + {k} * 3\n",
                                         max_tokens=max_tokens, temperature=0.7, seed=1000 * i + k)
                with lock:
                    latencies.append(time.monotonic() - t)
                    tokens[0] += r.usage.completion_tokens
            except openai.OpenAIError:
                with lock:
                    errors[0] += 1
            k += 1

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    latencies.sort()
    return {"requests": len(latencies), "rps": len(latencies) / wall, "tokens_per_s": tokens[0] / wall,
            "p50_s": statistics.median(latencies) if latencies else None,
            "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else None,
            "errors": errors[0]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="a saved causal LM (default: an untrained model of the built-in policy's shape)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--max-tokens", type=int, default=48)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else Path(tmp) / "model"
        if not args.model:
            tok = char_tokenizer()
            tiny_llama(tok, hidden=128, layers=3, heads=4).save_pretrained(model)
            tok.save_pretrained(model)
        out = {}
        for name, batching in (("one at a time", False), ("batched", True)):
            proc, url = start_server(model, "m", "--batching" if batching else "--no-batching")
            try:
                load(url, 2, 3, args.max_tokens)  # warm-up
                out[name] = load(url, args.clients, args.seconds, args.max_tokens)
            finally:
                proc.kill()
                proc.wait()
    print(f"{args.clients} clients for {args.seconds:.0f} s each, {args.max_tokens} tokens per request")
    print(f"{'server':<16}{'requests':>9}{'req/s':>8}{'tokens/s':>10}{'p50 s':>8}{'p99 s':>8}{'errors':>8}")
    for name, r in out.items():
        print(f"{name:<16}{r['requests']:>9}{r['rps']:>8.2f}{r['tokens_per_s']:>10.0f}{r['p50_s']:>8.2f}"
              f"{r['p99_s']:>8.2f}{r['errors']:>8}")
    speedup = out["batched"]["tokens_per_s"] / out["one at a time"]["tokens_per_s"]
    print(json.dumps({"clients": args.clients, "seconds": args.seconds, "max_tokens": args.max_tokens,
                      **{f"{'batched' if k == 'batched' else 'serial'}_{m}": round(v, 3) if isinstance(v, float) else v
                         for k, r in out.items() for m, v in r.items()},
                      "throughput_ratio": round(speedup, 2)}))


if __name__ == "__main__":
    main()
