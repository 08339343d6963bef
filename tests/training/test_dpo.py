"""Step-DPO learns where a solution stops: a step pair's last step ends with the end of sequence."""

import torch
from transformers import AutoModelForCausalLM

from qstar_dagster.training.charlm import char_tokenizer, tiny_llama
from qstar_dagster.training.dpo import DPOSpec, train_dpo


def next_token(path, tok, text: str) -> dict[str, float]:
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        p = torch.softmax(model(ids).logits[0, -1], -1)
    return {"end": float(p[tok.eos_token_id]), "separator": float(p[tok.convert_tokens_to_ids("\n")])}


def test_step_pairs_teach_the_last_step_to_end_and_the_others_to_go_on(tmp_path):
    tok = char_tokenizer()
    tiny_llama(tok, hidden=32, layers=1, heads=2).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    last = ("Make 5 from: 2 3\n", "2 + 3 = 5 (left: 5)")  # ends the solution: no separator
    first = ("Make 6 from: 1 2 3\n", "1 + 2 = 3 (left: 3 3)\n")  # the solution goes on
    rows = [{"prompt": last[0], "chosen": last[1], "rejected": "2 * 3 = 6 (left: 6)"},
            {"prompt": first[0], "chosen": first[1], "rejected": "1 * 2 = 2 (left: 2 3)\n"}] * 8
    train_dpo(tmp_path / "base", rows, tmp_path / "dpo", DPOSpec(steps=60, batch_size=4, lr=1e-2), completion_end="\n")

    after_last = next_token(tmp_path / "dpo", tok, "".join(last))
    after_first = next_token(tmp_path / "dpo", tok, first[0] + first[1].rstrip("\n"))
    assert after_last["end"] > 0.5 > after_last["separator"], after_last  # stops after reaching the target
    assert after_first["separator"] > 0.5 > after_first["end"], after_first  # a step is not an end
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "dpo")
    assert model.generation_config.eos_token_id == tok.eos_token_id  # the stand-in did not leak
