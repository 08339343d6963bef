"""`qstar serve`: an OpenAI-compatible server in front of a local model.

/v1/models, /v1/completions and /v1/chat/completions over the transformers backend, so the
HTTP path can be exercised end to end against a real server, and a model the factory
trained can be used by any OpenAI-compatible tool.

- Requests that arrive together share the model's batch (`Batcher`): the requests queued
  while the model is busy, and those with the same sampling settings, are generated in one
  call. Each prompt samples from a generator of its own, seeded from the request's `seed`
  and the prompt's place in it, so a request's text does not depend on what it was batched
  with: the same request gives the same text alone, under load, streamed or not.
- `stream: true` answers with server-sent events as the OpenAI API defines them: chunks of
  text, a last chunk per choice with its `finish_reason`, a usage chunk when
  `stream_options.include_usage` asks for one, then `data: [DONE]`. The text is generated
  whole first (the batch decodes together) and then sent a token at a time: time to the
  first chunk is the generation's time, not one token's.
- Every bad request is a 4xx with an OpenAI-style error naming the field (`param`) and
  what is allowed; a 500 is a fault of the server's own, logged with its traceback.

transformers' own `transformers serve` would be the ecosystem's choice, but its legacy
completions endpoint ignores `n` and `logprobs` (UNUSED_LEGACY_COMPLETION_FIELDS in
transformers/cli/serving/completion.py) and seeds once per server, which search and
labeling need per request; so this server stays.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field, replace

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from qstar_dagster.generation.base import Completion, SamplingParams
from qstar_dagster.generation.hf import TransformersGenerator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeLimits:
    max_n: int = 16  # completions per prompt
    max_prompts: int = 64  # prompts per request
    max_batch_prompts: int = 256  # prompts generated together across requests
    batch_window_s: float = 0.005  # how long the first request of a batch waits for others
    batching: bool = True  # off: one request at a time (the bench's baseline)


class RequestError(Exception):
    """A bad request: answered with `status` and an OpenAI-style error body."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code

    def response(self) -> JSONResponse:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return JSONResponse({"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}},
                            status_code=self.status)


def _get(body: dict, name: str, kinds: tuple[type, ...], default, what: str):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise RequestError(f"'{name}' must be {what}, got {json.dumps(value)[:60]}", name)
    return value


def _number(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    value = float(_get(body, name, (int, float), default, f"a number in {'(' if lo_open else '['}{lo}, {hi}]"))
    if value > hi or value < lo or lo_open and value == lo:
        raise RequestError(f"'{name}' must be in {'(' if lo_open else '['}{lo}, {hi}], got {value}", name)
    return value


def _integer(body: dict, name: str, default: int, lo: int, hi: int, why: str = "") -> int:
    value = _get(body, name, (int,), default, f"an integer in [{lo}, {hi}]")
    if not lo <= value <= hi:
        raise RequestError(f"'{name}' must be in [{lo}, {hi}]{why}, got {value}", name)
    return value


@dataclass
class Parsed:
    prompts: list[str]
    params: SamplingParams
    stream: bool
    include_usage: bool
    prompt_tokens: list[int] = field(default_factory=list)


def parse_request(body, gen: TransformersGenerator, model_name: str, limits: ServeLimits, chat: bool) -> Parsed:
    """The request's prompts and sampling settings, or a RequestError naming what is wrong."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model != model_name:
        raise RequestError(f"model {json.dumps(model)[:80]} does not exist; this server serves '{model_name}'",
                           "model", 404, "model_not_found")
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
            raise RequestError("'messages' must be a non-empty list of {role, content} with string content",
                               "messages")
        prompts = [_chat_prompt(gen.tokenizer, messages)]
    else:
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise RequestError("'prompt' must be a string or a non-empty list of strings", "prompt")
        if len(prompts) > limits.max_prompts:
            raise RequestError(f"'prompt' has {len(prompts)} prompts; this server takes at most {limits.max_prompts} "
                               "per request (qstar serve --max-prompts)", "prompt")
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise RequestError("'stop' must be a string or a list of at most 4 non-empty strings", "stop")
    lengths = [len(gen.tokenizer(p)["input_ids"]) for p in prompts]
    context = int(getattr(gen.model.config, "max_position_embeddings", 0) or 2048)
    room = context - max(lengths)
    if room < 1:
        raise RequestError(f"the prompt is {max(lengths)} tokens; the model's context is {context}", "prompt")
    name = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _integer(body, name, 16, 1, room, f" (the model's context is {context} tokens, the prompt "
                          f"{max(lengths)})")
    logprobs = body.get("logprobs")
    if chat:
        logprobs = _get(body, "logprobs", (bool,), False, "true or false")
    elif logprobs is not None:  # the completions API asks for a count of top alternatives (0-5)
        logprobs = _get(body, "logprobs", (int, bool), 0, "an integer in [0, 5]")
        if not isinstance(logprobs, bool) and not 0 <= logprobs <= 5:
            raise RequestError(f"'logprobs' must be in [0, 5], got {logprobs}", "logprobs")
        logprobs = True
    options = _get(body, "stream_options", (dict,), {}, "an object")
    params = SamplingParams(
        n=_integer(body, "n", 1, 1, limits.max_n, " (qstar serve --max-n)"),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        max_new_tokens=max_tokens,
        stop=tuple(stop),
        seed=_integer(body, "seed", 0, 0, 2 ** 63 - 1),
        logprobs=bool(logprobs),
    )
    return Parsed(prompts, params, bool(_get(body, "stream", (bool,), False, "true or false")),
                  bool(_get(options, "include_usage", (bool,), False, "true or false")), lengths)


def _chat_prompt(tokenizer, messages: list[dict]) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['content']}\n" for m in messages)  # models without a template: plain text


def prompt_seed(seed: int, index: int) -> int:
    """The seed of a request's `index`-th prompt, the same wherever the request is batched;
    the first prompt's is the request's own, so a one-prompt request samples exactly as the
    local backend does with that seed."""
    if index == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:8], "little") >> 1


@dataclass
class _Job:
    prompts: list[str]
    params: SamplingParams
    future: Future


class Batcher:
    """One thread owns the model. Requests wait in a queue; each round takes everything
    queued (waiting `batch_window_s` for company when the queue was empty), groups it by
    sampling settings, and generates each group in one call, prompts seeded per request."""

    def __init__(self, gen: TransformersGenerator, limits: ServeLimits):
        self.gen, self.limits = gen, limits
        self.jobs: queue.Queue[_Job] = queue.Queue()
        self.batches = self.batched_requests = self.generated_tokens = 0  # /metrics
        threading.Thread(target=self._loop, name="qstar-serve-batcher", daemon=True).start()

    def submit(self, prompts: list[str], params: SamplingParams) -> Future:
        future: Future = Future()
        self.jobs.put(_Job(prompts, params, future))
        return future

    def _take(self) -> list[_Job]:
        jobs = [self.jobs.get()]
        if not self.limits.batching:
            return jobs
        deadline = time.monotonic() + self.limits.batch_window_s
        while sum(len(j.prompts) for j in jobs) < self.limits.max_batch_prompts:
            try:
                jobs.append(self.jobs.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return jobs

    def _loop(self) -> None:
        while True:
            jobs = self._take()
            groups: dict[SamplingParams, list[_Job]] = {}
            for job in jobs:  # the seed lives in the prompt seeds: requests differing only by it batch together
                groups.setdefault(replace(job.params, seed=0), []).append(job)
            for params, group in groups.items():
                prompts = [p for j in group for p in j.prompts]
                seeds = [prompt_seed(j.params.seed, i) for j in group for i in range(len(j.prompts))]
                try:
                    results = self.gen.generate(prompts, params, prompt_seeds=seeds)
                except Exception as e:  # a fault of the server's: every waiting request hears of it
                    log.exception("generation failed for a batch of %d requests", len(group))
                    for j in group:
                        j.future.set_exception(e)
                    continue
                self.batches += 1
                self.batched_requests += len(group)
                self.generated_tokens += sum(c.n_tokens for cs in results for c in cs)
                at = 0
                for j in group:
                    j.future.set_result(results[at:at + len(j.prompts)])
                    at += len(j.prompts)


def _pieces(tokenizer, text: str) -> list[str]:
    """`text` in the pieces its tokens decode to (joined, exactly `text`): what streaming sends."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces, done = [], ""
    for i in range(1, len(ids) + 1):
        so_far = tokenizer.decode(ids[:i], skip_special_tokens=True)
        if len(so_far) > len(done) and so_far.startswith(done) and text.startswith(so_far):
            pieces.append(so_far[len(done):])
            done = so_far
    if done != text:
        pieces.append(text[len(done):])
    return pieces


def _sse(payload) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def make_app(gen: TransformersGenerator, model_name: str, limits: ServeLimits = ServeLimits(),
             weights_sha256: str | None = None) -> Starlette:
    """`weights_sha256`: the served weights' hash, listed in /v1/models, so that a client can
    check it is talking to the checkpoint it means (the factory's policy servers do)."""
    batcher = Batcher(gen, limits)

    async def models(_: Request) -> JSONResponse:
        card = {"id": model_name, "object": "model", "owned_by": "qstar"}
        return JSONResponse({"object": "list", "data": [card | ({"sha256": weights_sha256} if weights_sha256 else {})]})

    async def metrics(_: Request) -> Response:
        """Prometheus' text format: what the server has done since it started."""
        lines = [f"# TYPE qstar_{name}_total counter\nqstar_{name}_total {value}" for name, value in (
            ("requests", batcher.batched_requests), ("batches", batcher.batches),
            ("generated_tokens", batcher.generated_tokens))]
        return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    def usage(parsed: Parsed, flat: list[Completion]) -> dict:
        used = sum(c.n_tokens for c in flat)
        n_prompt = sum(parsed.prompt_tokens)
        return {"prompt_tokens": n_prompt, "completion_tokens": used, "total_tokens": n_prompt + used}

    def completion_body(parsed: Parsed, flat: list[Completion]) -> dict:
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": model_name, "usage": usage(parsed, flat), "choices": [{
                    "index": i, "text": c.text, "finish_reason": c.finish_reason,
                    "stop_reason": c.stop_string,  # as vLLM says it: the stop string that ended it, or null
                    "logprobs": {"token_logprobs": c.token_logprobs} if parsed.params.logprobs else None,
                } for i, c in enumerate(flat)]}

    def chat_body(parsed: Parsed, flat: list[Completion]) -> dict:
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": model_name, "usage": usage(parsed, flat), "choices": [{
                    "index": i, "finish_reason": c.finish_reason, "stop_reason": c.stop_string,
                    "message": {"role": "assistant", "content": c.text},
                    "logprobs": {"content": [{"logprob": lp} for lp in c.token_logprobs]}
                    if parsed.params.logprobs else None,
                } for i, c in enumerate(flat)]}

    def stream(parsed: Parsed, flat: list[Completion], chat: bool) -> Iterator[str]:
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        head = {"id": ident, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": model_name}
        for i, c in enumerate(flat):
            if chat:
                yield _sse({**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                 "finish_reason": None}]})
            for piece in _pieces(gen.tokenizer, c.text):
                choice = {"index": i, "delta": {"content": piece}} if chat else \
                    {"index": i, "text": piece, "logprobs": None}
                yield _sse({**head, "choices": [{**choice, "finish_reason": None}]})
            last = {"index": i, "delta": {}} if chat else {"index": i, "text": "", "logprobs": None}
            yield _sse({**head, "choices": [{**last, "finish_reason": c.finish_reason}]})
        if parsed.include_usage:
            yield _sse({**head, "choices": [], "usage": usage(parsed, flat)})
        yield _sse("[DONE]")

    def endpoint(chat: bool):
        async def handle(request: Request) -> Response:
            try:
                try:
                    body = json.loads(await request.body())
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise RequestError(f"the request body is not valid JSON ({e})") from None
                parsed = parse_request(body, gen, model_name, limits, chat)
                results = await asyncio.wrap_future(batcher.submit(parsed.prompts, parsed.params))
                flat = [c for cs in results for c in cs]
                if parsed.stream:
                    return StreamingResponse(stream(parsed, flat, chat), media_type="text/event-stream")
                return JSONResponse(chat_body(parsed, flat) if chat else completion_body(parsed, flat))
            except RequestError as e:
                return e.response()
            except Exception as e:  # the server's own fault: logged, and said to be one
                log.exception("%s failed", request.url.path)
                return RequestError(f"internal server error ({type(e).__name__}); see the server's log",
                                    status=500).response()
        return handle

    app = Starlette(routes=[
        Route("/v1/models", models), Route("/metrics", metrics),
        Route("/v1/completions", endpoint(chat=False), methods=["POST"]),
        Route("/v1/chat/completions", endpoint(chat=True), methods=["POST"]),
    ])
    app.state.batcher = batcher
    return app
