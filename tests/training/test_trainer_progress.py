"""The PRM's training loop and TRL's DPO trainer report progress in the log, not as dicts on stdout."""

import logging

from qstar_dagster.tasks.arith import generate_problems
from qstar_dagster.training.charlm import char_tokenizer, tiny_llama
from qstar_dagster.training.dpo import DPOSpec, train_dpo
from qstar_dagster.training.prm import PRMTrainSpec, train_prm


def test_prm_and_dpo_training_log_progress_lines_and_print_nothing(tmp_path, caplog, capsys):
    tok = char_tokenizer()
    tiny_llama(tok, hidden=32, layers=1, heads=2).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    problems = generate_problems(4, seed=3)
    prm_rows = [{"prompt": p.problem, "completions": p.reference_solution.split("\n"),
                 "labels": [True] * len(p.reference_solution.split("\n"))} for p in problems]
    prm_rows[0]["labels"][-1] = False
    pairs = [{"prompt": p.problem + "\n", "chosen": p.reference_solution + "\n", "rejected": "1 + 1 = 3\n"}
             for p in problems]
    with caplog.at_level(logging.INFO, logger="qstar_dagster"):
        train_prm(tmp_path / "base", prm_rows, tmp_path / "prm", PRMTrainSpec(steps=30, batch_size=2))
        train_dpo(tmp_path / "base", pairs, tmp_path / "dpo", DPOSpec(steps=10, batch_size=2), completion_end="\n")
    lines = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("prm: step 25/30, loss ") and "steps/s" in m for m in lines), lines
    assert any(m.startswith("dpo: step 10/10, loss ") for m in lines), lines
    assert "'loss'" not in capsys.readouterr().out  # the Trainer's printer is gone
