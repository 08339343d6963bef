"""`qstar serve`: an OpenAI-compatible server in front of a local model.

/v1/models, /v1/completions and /v1/chat/completions over the transformers backend, so the
HTTP path can be exercised end to end against a real server, and a model the factory
trained can be used by any OpenAI-compatible tool.
"""

from __future__ import annotations

import threading
import time
import uuid

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from qstar_dagster.generation.base import SamplingParams
from qstar_dagster.generation.hf import TransformersGenerator


def _params(body: dict) -> SamplingParams:
    stop = body.get("stop") or ()
    return SamplingParams(
        n=int(body.get("n") or 1),
        temperature=float(body.get("temperature", 1.0)),
        top_p=float(body.get("top_p", 1.0)),
        max_new_tokens=int(body.get("max_tokens") or body.get("max_completion_tokens") or 16),
        stop=(stop,) if isinstance(stop, str) else tuple(stop),
        seed=int(body.get("seed") or 0),
        logprobs=bool(body.get("logprobs")),
    )


def _chat_prompt(tokenizer, messages: list[dict]) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['content']}\n" for m in messages)  # models without a template: plain text


def make_app(gen: TransformersGenerator, model_name: str) -> Starlette:
    lock = threading.Lock()  # one generation at a time: the model is not re-entrant

    def run(prompts: list[str], params: SamplingParams):
        with lock:
            return gen.generate(prompts, params)

    def bad_request(msg: str) -> JSONResponse:
        return JSONResponse({"error": {"message": msg, "type": "invalid_request_error"}}, status_code=400)

    async def models(_: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "qstar"}]})

    async def completions(request: Request) -> JSONResponse:
        body = await request.json()
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            return bad_request("'prompt' must be a string or a list of strings")
        try:
            params = _params(body)
        except (TypeError, ValueError) as e:
            return bad_request(str(e))
        results = await run_in_threadpool(run, prompts, params)
        choices, used = [], 0
        for i, completion in enumerate(c for cs in results for c in cs):
            used += completion.n_tokens
            choices.append({
                "index": i, "text": completion.text, "finish_reason": completion.finish_reason,
                "logprobs": {"token_logprobs": completion.token_logprobs} if params.logprobs else None,
            })
        n_prompt = sum(len(gen.tokenizer(p)["input_ids"]) for p in prompts)
        return JSONResponse({
            "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": model_name, "choices": choices,
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": used, "total_tokens": n_prompt + used},
        })

    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) and "content" in m for m in messages):
            return bad_request("'messages' must be a list of {role, content}")
        try:
            params = _params(body)
        except (TypeError, ValueError) as e:
            return bad_request(str(e))
        prompt = _chat_prompt(gen.tokenizer, messages)
        [completions_] = await run_in_threadpool(run, [prompt], params)
        choices = [{
            "index": i, "finish_reason": c.finish_reason, "message": {"role": "assistant", "content": c.text},
            "logprobs": {"content": [{"logprob": lp} for lp in c.token_logprobs]} if params.logprobs else None,
        } for i, c in enumerate(completions_)]
        used = sum(c.n_tokens for c in completions_)
        n_prompt = len(gen.tokenizer(prompt)["input_ids"])
        return JSONResponse({
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model_name, "choices": choices,
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": used, "total_tokens": n_prompt + used},
        })

    return Starlette(routes=[
        Route("/v1/models", models), Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
    ])
