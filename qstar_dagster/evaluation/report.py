"""The summary a round ends with: the base policy against the round's trained policies on the
held-out set (greedy, majority@8, PRM best-of-8 and PRM vote@8): RFT, step-DPO and step-PPO; and label
agreement with the oracle."""

from __future__ import annotations

from qstar_dagster.lineage import artifacts
from qstar_dagster.lineage.labels import latest_agreements
from qstar_dagster.lineage.rollouts import search_accuracy
from qstar_dagster.lineage.store import LineageStore


def _figures(store: LineageStore, policy: str, prm: str | None, prompt_set: str) -> dict:
    rows = artifacts.latest_sweep(store, prompt_set, policy=policy)
    alone = {r["method"]: r["accuracy"] for r in rows if len(r["checkpoint_ids"]) == 1}
    with_prm = {r["method"]: r["accuracy"] for r in rows if len(r["checkpoint_ids"]) == 2 and r["checkpoint_ids"][1] == prm}
    return {"greedy": alone.get("greedy"), "majority_at_8": alone.get("majority@8"), "pass_at_8": alone.get("pass@8"),
            "random_sample": alone.get("random@8"),
            "prm_best_of_8": with_prm.get("prm_best_of_8:min"), "prm_vote_at_8": with_prm.get("prm_vote@8")}


def report(store: LineageStore, prompt_set: str = "arith-test") -> dict:
    """Figures for `qstar report`; None where a stage has not run yet."""
    base_id = artifacts.latest_base_policy_id(store, prompt_set)
    if base_id is None:
        raise LookupError(f"no base policy in {store.path}; run `make demo` first")
    trained = artifacts.trained_from(store, base_id)
    # the PRM trained from this base policy (another domain's PRM would not know its steps)
    prm_id = trained.get("prm") or (store.latest_checkpoint("prm") or {}).get("checkpoint_id")
    out = {"prompt_set": prompt_set, "base_policy": base_id, "prm": prm_id}
    # the PRM against the oracle on held-out steps: is it a verifier or a difficulty estimate?
    methods = ["prm_step_accuracy", "prm_first_error_f1", "prm_sibling_accuracy"]
    judged = artifacts.latest_accuracies(store, prompt_set, prm_id, methods) if prm_id else {}
    for method in methods:
        out[method] = judged.get(method)
    for prefix, ck in (("base", base_id), ("round1", trained.get("rft")), ("round1_dpo", trained.get("trl.DPOTrainer")),
                       ("round1_step_ppo", trained.get("step_ppo"))):
        out[f"{prefix}_checkpoint"] = ck
        for k, v in (_figures(store, ck, prm_id, prompt_set) if ck else {}).items():
            out[f"{prefix}_{k}"] = v
    # beam search from the base policy on the held-out set, valued by its likelihood and by the PRM
    for key, value in (("search_likelihood", "likelihood"), ("search_prm", prm_id and f"prm:{prm_id}")):
        found = value and search_accuracy(store, prompt_set, base_id, value)
        out[key] = found and found["selected_accuracy"]
        out[f"{key}_nodes_per_tree"] = found and round(found["nodes_per_tree"], 1)
    out["label_agreement"] = {r["labeler"]: {"accuracy": r["accuracy"], "first_error_f1": r["first_error_f1"],
                                             "tokens_per_step": r["tokens_per_step"]}
                              for r in latest_agreements(store, prompt_set, "oracle")}
    return out


def render(r: dict) -> str:
    def pct(v):
        return "  –  " if v is None else f"{100 * v:5.1f}%"

    lines = [f"held-out set {r['prompt_set']}; PRM {r['prm'] or '(none yet)'}",
             "| policy | checkpoint | greedy | a random sample | majority@8 | PRM best-of-8 | PRM vote@8 | pass@8 |",
             "|---|---|---|---|---|---|---|---|"]
    for prefix, name in (("base", "base"), ("round1", "round 1 (RFT)"), ("round1_dpo", "round 1 (step-DPO)"),
                         ("round1_step_ppo", "round 1 (step-PPO)")):
        if r.get(f"{prefix}_checkpoint"):
            lines.append(f"| {name} | {r[f'{prefix}_checkpoint']} | {pct(r.get(f'{prefix}_greedy'))} | "
                         f"{pct(r.get(f'{prefix}_random_sample'))} | "
                         f"{pct(r.get(f'{prefix}_majority_at_8'))} | {pct(r.get(f'{prefix}_prm_best_of_8'))} | "
                         f"{pct(r.get(f'{prefix}_prm_vote_at_8'))} | {pct(r.get(f'{prefix}_pass_at_8'))} |")
    if r.get("search_likelihood") is not None or r.get("search_prm") is not None:
        lines += ["", ("beam search from the base policy, selected path right: "
                  f"valued by likelihood {pct(r.get('search_likelihood')).strip()} "
                  f"({r.get('search_likelihood_nodes_per_tree') or '–'} nodes/tree), by the PRM "
                  f"{pct(r.get('search_prm')).strip()} ({r.get('search_prm_nodes_per_tree') or '–'} nodes/tree)")]
    if r.get("prm_sibling_accuracy") is not None:
        verdict = (f"PRM against the oracle on held-out steps: step accuracy {pct(r['prm_step_accuracy']).strip()}, "
                   f"right-over-wrong sibling steps {pct(r['prm_sibling_accuracy']).strip()} (chance 50%)")
        lines += ["", verdict]
    lines += ["", "label agreement with the oracle (steps up to each first error):",
              "| labeler | accuracy | first-error F1 | tokens/step |", "|---|---|---|---|"]
    for name, a in r["label_agreement"].items():
        f1 = "–" if a["first_error_f1"] is None else f"{a['first_error_f1']:.3f}"
        lines.append(f"| {name} | {pct(a['accuracy'])} | {f1} | {a['tokens_per_step']} |")
    return "\n".join(lines)
