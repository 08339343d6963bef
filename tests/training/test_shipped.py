"""Base policies (and verifier backbones) shipped with the package: their files against their manifests, and the
`base_policy` asset starting from one (recorded as any base policy), refusing a changed file
or a training set that is not the one it learned on."""

import json
import shutil

import pytest

from qstar_dagster.lineage import LineageStore
from qstar_dagster.lineage.store import prompt_set_version
from qstar_dagster.tasks.prompt_sets import DOMAIN_SETS, builtin_problems
from qstar_dagster.training import shipped
from qstar_dagster.training.base_policy import rebuild_config
from qstar_dagster.training.shipped import (
    ShippedPolicyError,
    file_sha256,
    shipped_policies,
    write_shipped,
)

from ..assets.test_policy import env, load_prompt_sets, metadata, run_policy  # noqa: F401 (env: a fixture)

EVAL = {"eval_k": 2, "eval_max_new_tokens": 24}


def test_the_shipped_models_match_their_manifests_and_the_built_in_sets():
    """What the package ships: one policy per built-in domain and its verifier backbone,
    every file as its manifest says, trained on the built-in training set as the domain
    generates it today, 10 MB at most in all."""
    by_role = {role: shipped_policies(role=role) for role in shipped.ROLES}
    assert set(by_role["policy"]) == set(by_role["verifier"]) == {"arith-train", "countdown-train"}
    total = 0
    for role, models in by_role.items():
        assert {p.domain for p in models.values()} <= set(DOMAIN_SETS)
        for train_set, model in models.items():
            assert model.role == role
            shipped.verify(model)
            assert DOMAIN_SETS[model.domain][0] == train_set
            # a changed generator or default would make the store's version differ: rebuild, then ship
            assert model.train_version == prompt_set_version(builtin_problems(train_set)), model.rebuild_hint()
            assert model.config["architecture"] == "char-llama" and model.config["steps"] > 0
            assert {"model.safetensors", "config.json"} <= set(model.files)
            total += sum((model.path / f).stat().st_size for f in model.files)
    # a verifier is the policy trained further: the same architecture, so the same tokenizer
    verifier, policy = by_role["verifier"]["arith-train"], by_role["policy"]["arith-train"]
    assert verifier.files["tokenizer.json"] == policy.files["tokenizer.json"]
    assert verifier.files["model.safetensors"] != policy.files["model.safetensors"]
    assert "verifier_backbone.py" in verifier.rebuild_hint()
    assert total <= 10e6


def test_a_model_shipped_in_half_precision_loads_in_float32_with_the_same_outputs(tmp_path, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    policy = write_shipped(tiny_model_dir, tmp_path / "arith", domain="arith", train_prompt_set="arith-train",
                           train_version="v1", config={}, metrics={}, trained_by="a test", half=True)
    shipped.verify(policy)  # the manifest hashes the float16 files it ships
    full = (tiny_model_dir / "model.safetensors").stat().st_size
    assert (policy.path / "model.safetensors").stat().st_size < 0.6 * full
    a, b = (AutoModelForCausalLM.from_pretrained(d) for d in (tiny_model_dir, policy.path))
    assert all(p.dtype == torch.float32 for p in b.parameters())
    ids = torch.tensor([[1, 20, 30, 40, 50]])
    with torch.no_grad():
        assert torch.allclose(a(ids).logits, b(ids).logits, atol=1e-2)
    assert policy.files.keys() >= {"model.safetensors", "config.json", "tokenizer.json"}


@pytest.fixture
def fake_root(tmp_path, monkeypatch):
    """A shipped-policy root holding one policy, trained (here: the untrained tiny model)
    on the test env's arith-train."""
    root = tmp_path / "policies"
    monkeypatch.setattr(shipped, "SHIPPED_ROOT", root)
    return root


def ship_fake(root, model_dir, version):
    return write_shipped(model_dir, root / "arith", domain="arith", train_prompt_set="arith-train",
                         train_version=version, config={"hidden": 64, "layers": 2, "steps": 0, "template": "{problem}\n",
                                                        "architecture": "char-llama"},
                         metrics={}, trained_by="a test")


def test_write_and_verify_catch_a_changed_or_missing_file(tmp_path, tiny_model_dir):
    policy = ship_fake(tmp_path, tiny_model_dir, "v1")
    assert shipped_policies(tmp_path)["arith-train"].files == policy.files
    assert policy.files["model.safetensors"] == file_sha256(tiny_model_dir / "model.safetensors")
    shipped.verify(policy)

    weights = policy.path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ShippedPolicyError, match=r"model\.safetensors: sha256 .*qstar ship-policy --domain arith"):
        shipped.verify(policy)
    weights.unlink()
    with pytest.raises(ShippedPolicyError, match="missing"):
        shipped.verify(policy)
    with pytest.raises(LookupError, match="trained on prompt set 'gsm8k'.*shipped: false"):
        shipped.shipped_policy("gsm8k", tmp_path)


def test_base_policy_starts_from_the_shipped_policy_and_records_it(env, fake_root, tiny_model_dir):  # noqa: F811
    load_prompt_sets(env)
    store = LineageStore(env[2] / "lineage.duckdb")
    version, _ = store.prompt_set_problems("arith-train")
    policy = ship_fake(fake_root, tiny_model_dir, version)
    (policy.path / "training.json").write_text(json.dumps({
        "n_parameters": 1, "n_train_examples": 300, "train_seconds": 9.0, "final_loss": 0.5,
        "loss_curve": [[1, 2.0], [2, 1.0]], "accuracy_curve": [[2, 0.5]]}))

    meta = metadata(run_policy(env, EVAL))  # the default: shipped
    assert meta["shipped"] is True and meta["reused"] is False
    [ck] = store.records("SELECT * FROM checkpoints")
    assert ck["checkpoint_id"] == meta["checkpoint_id"] and ck["trained_on_prompt_set"] == f"arith-train@{version}"
    config = json.loads(ck["config"])
    assert config["shipped"] == "arith" and config["hidden"] == 64 and config.get("trainer") is None
    # a copy in the data directory, the same bytes as shipped; the training curves of the shipped run
    assert ck["path"] == str(env[2] / "checkpoints" / ck["checkpoint_id"])
    assert file_sha256(env[2] / "checkpoints" / ck["checkpoint_id"] / "model.safetensors") == \
        policy.files["model.safetensors"]
    assert meta["train_seconds"] == 9.0 and meta["training_curves"].startswith("![training loss")
    assert store.latest_checkpoint("policy", base_only=True)["checkpoint_id"] == ck["checkpoint_id"]
    assert metadata(run_policy(env, {**EVAL, "shipped": True}))["reused"] is True

    # a changed file is refused, naming it and the fix; nothing new is recorded
    shutil.copy(policy.path / "config.json", policy.path / "config.json.bak")
    (policy.path / "config.json").write_text((policy.path / "config.json.bak").read_text() + " ")
    failed = run_policy(env, {**EVAL, "shipped": True, "eval_temperature": 1.0}, raise_on_error=False)
    assert not failed.success and "config.json: sha256" in str(failed.get_step_failure_events()[0].event_specific_data)
    shutil.move(policy.path / "config.json.bak", policy.path / "config.json")
    assert store.query("SELECT count(*) FROM checkpoints")[1] == [(1,)]

    # another arith-train (here a longer one) is not what it learned on
    load_prompt_sets(env, {"arith-train": 301})
    failed = run_policy(env, {**EVAL, "shipped": True}, raise_on_error=False)
    message = str(failed.get_step_failure_events()[0].event_specific_data)
    assert not failed.success and f"trained on arith-train@{version}" in message and "qstar ship-policy" in message
    # training from scratch stays available
    scratch = metadata(run_policy(env, {**EVAL, "shipped": False, "hidden": 32, "layers": 1, "heads": 2, "steps": 4,
                                        "batch_size": 4, "warmup": 1, "eval_every": 0}))
    assert scratch["shipped"] is False and scratch["checkpoint_id"] != ck["checkpoint_id"]


def test_a_rebuild_trains_with_the_shipped_policys_settings(tmp_path):
    """`qstar ship-policy` rebuilds what ships, not the asset's defaults: the Countdown policy
    trained 4,000 steps where `BasePolicyConfig` says 3,000. Only trainer fields pass through."""
    for name, steps in (("countdown", 4000), ("countdown-verifier", 9000)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "shipped.json").write_text(json.dumps({
            "domain": "countdown", "train_prompt_set": "countdown-train", "files": {},
            "role": "verifier" if name.endswith("verifier") else "policy",
            "config": {"steps": steps, "practice": 0.5, "template": "{problem}\n", "continued_from": "x"}}))
    assert rebuild_config("countdown-train", tmp_path) == {"steps": 4000, "practice": 0.5}
    assert rebuild_config("arith-train", tmp_path) == {}
    assert rebuild_config("countdown-train")["steps"] == shipped.shipped_policy("countdown-train").config["steps"]
