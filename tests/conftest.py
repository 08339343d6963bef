import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from qstar_dagster.tasks.arith import ArithSpec

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GSM8K_ROWS = [
    {"question": "Janet has 16 eggs and eats 3. How many are left?", "answer": "16 - 3 = <<16-3=13>>13\n#### 13"},
    {"question": "A shop sells 1,200 pens a day for 3 days. How many pens?",
     "answer": "1200 * 3 = <<1200*3=3600>>3600\n#### 3,600"},
]
MATH_ROWS = [
    {"problem": "Compute $\\frac{1}{2}+\\frac{1}{3}$.", "solution": "It is $\\boxed{\\frac{5}{6}}$.",
     "answer": "\\frac{5}{6}", "level": 1, "subject": "Prealgebra", "unique_id": "test/a.json"},
    {"problem": "Find $z$ with $z+\\bar z = 12$, $z-\\bar z=-18i$.",
     "solution": "So $z = \\boxed{6-9i}$.", "level": 3, "subject": "Algebra"},
]


@pytest.fixture
def gsm8k_file(tmp_path):
    return write_jsonl(tmp_path / "gsm8k_small.jsonl", GSM8K_ROWS)


@pytest.fixture
def math_file(tmp_path):
    return write_jsonl(tmp_path / "math_small.jsonl", MATH_ROWS)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """An untrained tiny character-level Llama and its tokenizer, saved the standard way."""
    from qstar_dagster.training.charlm import char_tokenizer, tiny_llama

    path = tmp_path_factory.mktemp("tiny-charlm")
    tok = char_tokenizer()
    tiny_llama(tok, hidden=64, layers=2, heads=2).save_pretrained(path)
    tok.save_pretrained(path)
    return path


# An easy corner of the built-in domain, where a policy trained for about a minute is right
# most of the time but not always: enough for search tests to find right and wrong paths.
EASY_ARITH = ArithSpec(min_steps=2, max_steps=2, max_operand=9, operators=("+", "-"))


@pytest.fixture(scope="session")
def arith_policy_dir(tmp_path_factory):
    """A small policy trained on EASY_ARITH (74% greedy, 94% pass@6 there). 700 steps sit on
    the edge where the policy starts to add right, and gave 26% greedy on one machine state
    where earlier ones saw about 50%: bench/fixture_policy.py."""
    from qstar_dagster.tasks.arith import generate_problems
    from qstar_dagster.training.base_policy import BasePolicyConfig, train_base_policy

    path = tmp_path_factory.mktemp("arith-policy")
    cfg = BasePolicyConfig(hidden=64, layers=2, heads=2, steps=1200, batch_size=32, lr=5e-3, warmup=20, eval_every=0)
    train_base_policy(generate_problems(1500, seed=5, spec=EASY_ARITH), path, cfg)
    return path


def start_server(model_dir, name: str, *options: str) -> tuple[subprocess.Popen, str]:
    """`qstar serve` (with `options`) on a free port in a subprocess, answering: (its process,
    its base URL)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("qstar")
    proc = subprocess.Popen([str(exe), "serve", str(model_dir), "--port", str(port), "--name", name, *options],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        if proc.poll() is not None:
            pytest.fail(proc.stdout.read())
        try:
            requests.get(f"{url}/v1/models", timeout=1)
            return proc, url
        except requests.ConnectionError:
            time.sleep(0.25)
    proc.kill()
    pytest.fail(f"qstar serve {model_dir} did not answer in 60 s")


def serve_model(model_dir, name: str):
    """`qstar serve` on a free port in a subprocess; yields its base URL."""
    proc, url = start_server(model_dir, name)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(20)


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    """The untrained tiny model behind the OpenAI-compatible server."""
    yield from serve_model(tiny_model_dir, "tiny")


def copied_env(seeded_home, tmp_path):
    """A fresh copy of a module's seeded data directory with a new instance that knows the
    built-in partitions: tests change their copy, never the shared one."""
    from dagster import DagsterInstance

    from qstar_dagster.assets.prompts import prompt_set_partitions
    from qstar_dagster.lineage import LineageStore

    home = tmp_path / "qstar"
    shutil.copytree(seeded_home, home)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(prompt_set_partitions.name, ["arith-test", "arith-train"])
    return instance, home, LineageStore(home / "lineage.duckdb")


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session (Debian's binaries, a fresh cluster);
    skips, saying why, where this machine has none."""
    from qstar_dagster.lineage import local_postgres

    try:
        server = local_postgres.start(durable=False)
    except local_postgres.NoPostgres as e:
        pytest.skip(f"shared-store tests need PostgreSQL: {e}")
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres):
    """A new empty database on the session's server: a shared store's URL."""
    return postgres.new_database()
