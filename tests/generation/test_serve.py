"""`qstar serve` for real clients: the `openai` client streamed and not (the same text for
the same seed), the stream's shape as the OpenAI API defines it, every bad request a 4xx
with an OpenAI-style error naming the field, and concurrent requests sharing the model's
batch without changing what each gets."""

import json
import socket
import threading
import time

import openai
import pytest
import requests
import uvicorn

from qstar_dagster.generation.hf import TransformersGenerator
from qstar_dagster.generation.server import ServeLimits, make_app


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)


def streamed_texts(chunks, n: int, chat: bool = False) -> tuple[list[str], list[str]]:
    texts, finish = [""] * n, [None] * n
    for chunk in chunks:
        for c in chunk.choices:
            texts[c.index] += (c.delta.content or "") if chat else c.text
            finish[c.index] = c.finish_reason or finish[c.index]
    return texts, finish


def test_completions_streamed_and_not_give_the_same_text(client):
    kw = {"model": "tiny", "prompt": "Q: 1+2\nA:", "max_tokens": 20, "n": 3, "seed": 7, "temperature": 1.0,
          "stop": ["\n\n"]}
    plain = client.completions.create(**kw)
    texts, finish = streamed_texts(client.completions.create(**kw, stream=True), 3)
    assert texts == [c.text for c in sorted(plain.choices, key=lambda c: c.index)]
    assert finish == [c.finish_reason for c in sorted(plain.choices, key=lambda c: c.index)]
    assert all(finish) and any(t for t in texts)
    other = client.completions.create(**{**kw, "seed": 8})
    assert [c.text for c in other.choices] != [c.text for c in plain.choices]


def test_chat_streamed_and_not_give_the_same_text(client):
    kw = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 12, "seed": 3, "n": 2}
    plain = client.chat.completions.create(**kw)
    texts, finish = streamed_texts(client.chat.completions.create(**kw, stream=True), 2, chat=True)
    assert texts == [c.message.content for c in plain.choices] and finish == ["length", "length"]


def test_the_stream_ends_with_finish_reasons_usage_and_done(server):
    r = requests.post(f"{server}/v1/completions", stream=True, json={
        "model": "tiny", "prompt": ["a", "b"], "max_tokens": 5, "stream": True,
        "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in r.iter_lines(decode_unicode=True) if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 10
    ends = [c["choices"][0] for c in chunks[:-1] if c["choices"][0]["finish_reason"]]
    assert [(e["index"], e["finish_reason"]) for e in ends] == [(0, "length"), (1, "length")]
    pieces = [c["choices"][0] for c in chunks[:-1] if not c["choices"][0]["finish_reason"]]
    assert all(len(p["text"]) == 1 for p in pieces)  # a chunk per token (a character) of the text
    plain = requests.post(f"{server}/v1/completions", json={"model": "tiny", "prompt": ["a", "b"], "max_tokens": 5})
    assert ["".join(p["text"] for p in pieces if p["index"] == i) for i in (0, 1)] == \
        [c["text"] for c in plain.json()["choices"]]


BAD = [
    (b"{not json", None, "not valid JSON"),
    ({"model": "tiny", "prompt": "x", "max_tokens": 100000000}, "max_tokens", "must be in [1, "),
    ({"model": "tiny", "prompt": "x", "max_tokens": "lots"}, "max_tokens", "must be an integer"),
    ({"model": "tiny", "prompt": "x", "n": 17}, "n", "--max-n"),
    ({"model": "tiny", "prompt": ["x"] * 65}, "prompt", "at most 64"),
    ({"model": "tiny", "prompt": 3}, "prompt", "'prompt' must be"),
    ({"model": "tiny", "prompt": "x", "temperature": -1}, "temperature", "[0.0, 2.0]"),
    ({"model": "tiny", "prompt": "x", "top_p": 0}, "top_p", "(0.0, 1.0]"),
    ({"model": "tiny", "prompt": "x", "stop": [1]}, "stop", "at most 4 non-empty strings"),
    ({"model": "tiny", "prompt": "x", "seed": "x"}, "seed", "must be an integer"),
    ({"model": "tiny", "prompt": "x", "stream": "yes"}, "stream", "true or false"),
    ({"model": "tiny", "prompt": "x", "logprobs": 9}, "logprobs", "[0, 5]"),
    ([1, 2], None, "a JSON object"),
]


@pytest.mark.parametrize("body,param,says", BAD)
def test_every_bad_request_is_a_400_naming_the_field(server, body, param, says):
    kw = {"data": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else {"json": body}
    r = requests.post(f"{server}/v1/completions", **kw)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and says in error["message"]
    assert "Traceback" not in r.text and "Error(" not in error["message"]


def test_the_context_and_the_model_are_checked_and_said(server, client):
    r = requests.post(f"{server}/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 100000000})
    assert "the model's context is" in r.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError, match="this server serves 'tiny'"):
        client.completions.create(model="gpt-4", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="'messages' must be"):
        client.chat.completions.create(model="tiny", messages=[], max_tokens=2)


@pytest.fixture(scope="module")
def in_process(tiny_model_dir):
    """The app under uvicorn in a thread of this process, so the test can read its batcher."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = make_app(TransformersGenerator(str(tiny_model_dir)), "tiny", ServeLimits())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", app.state.batcher
    server.should_exit = True
    thread.join(10)


def test_concurrent_requests_share_a_batch_and_each_gets_what_it_gets_alone(in_process):
    url, batcher = in_process
    bodies = [{"model": "tiny", "prompt": [f"Q: {i}+{i}\nA:", "more"], "max_tokens": 24, "seed": i,
               "temperature": 1.0} for i in range(8)]

    def ask(body):
        r = requests.post(f"{url}/v1/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        return [c["text"] for c in r.json()["choices"]]

    alone = [ask(b) for b in bodies]
    before = (batcher.batches, batcher.batched_requests)
    together: list = [None] * len(bodies)
    start = threading.Barrier(len(bodies))

    def worker(i):
        start.wait()
        together[i] = ask(bodies[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batches, requests_ = batcher.batches - before[0], batcher.batched_requests - before[1]
    assert requests_ == 8 and batches < 8  # some requests were generated together
    assert together == alone


def test_a_fault_of_the_server_is_a_logged_500(tiny_model_dir, caplog):
    from starlette.testclient import TestClient

    gen = TransformersGenerator(str(tiny_model_dir))

    def broken(*args, **kwargs):
        raise RuntimeError("the model fell over")

    gen.generate = broken
    with TestClient(make_app(gen, "tiny")) as http:
        r = http.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2})
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    assert "RuntimeError" in r.json()["error"]["message"] and "fell over" not in r.json()["error"]["message"]
    assert any("generation failed" in rec.getMessage() and rec.exc_info for rec in caplog.records)
