"""The OpenAI-compatible path end to end: `qstar serve` in a subprocess, the HTTP backend
talking to it, results equal to the local backend's for the same seed."""


import pytest
import requests

from qstar_dagster.generation.base import SamplingParams
from qstar_dagster.generation.hf import TransformersGenerator
from qstar_dagster.generation.openai_http import OpenAICompatibleGenerator


def test_models_endpoint(server):
    assert requests.get(f"{server}/v1/models").json()["data"][0]["id"] == "tiny"


def test_http_completions_equal_local_generation(server, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("QSTAR_TEST_KEY", "sk-secret-value")
    remote = OpenAICompatibleGenerator(f"{server}/v1", "tiny", api_key_env="QSTAR_TEST_KEY", max_concurrency=2)
    assert "sk-secret-value" not in repr(remote)
    local = TransformersGenerator(str(tiny_model_dir))
    params = SamplingParams(n=3, max_new_tokens=10, stop=("e",), seed=5, logprobs=True)
    prompts = ["Q: 1+2\nA:", "Q: 7*8\nA:"]
    got = remote.generate(prompts, params)
    want = [local.generate([p], params)[0] for p in prompts]  # the server runs one request per prompt
    assert [[c.text for c in cs] for cs in got] == [[c.text for c in cs] for cs in want]
    for cs_got, cs_want in zip(got, want):
        for g, w in zip(cs_got, cs_want):
            assert g.n_tokens == w.n_tokens and g.finish_reason == w.finish_reason
            assert g.logprob == pytest.approx(w.logprob, abs=1e-4)


def test_chat_mode(server):
    remote = OpenAICompatibleGenerator(f"{server}/v1", "tiny", mode="chat")
    [[a, b]] = remote.generate(["hello"], SamplingParams(n=2, max_new_tokens=5, seed=1))
    assert a.n_tokens == 5 and a.finish_reason == "length" and isinstance(b.text, str)


def test_bad_request_is_a_clear_400(server):
    r = requests.post(f"{server}/v1/completions", json={"model": "tiny", "prompt": 3})
    assert r.status_code == 400 and "'prompt'" in r.json()["error"]["message"]
