"""Queries the CLI prints for the user: text they can paste into `qstar sql` (the rest of the
store's SQL sits behind the typed readers of this package)."""

from __future__ import annotations

PROMPT_SET_SIZES = "SELECT prompt_set, domain, count(*) AS prompts FROM prompts GROUP BY ALL ORDER BY 1"

LABEL_AGREEMENT = "SELECT * FROM label_agreement"


def agreement_with_oracle(rollout_id: str) -> str:
    """Every labeler against the oracle on one rollout (the demo's label table)."""
    return f"""SELECT labeler, n_steps, accuracy, negative_precision, negative_recall, kappa, first_error_f1,
                      labeled_steps, tokens_per_step
               FROM label_agreement WHERE reference = 'oracle'
                 AND rollout_id = '{rollout_id.replace("'", "''")}' ORDER BY labeler"""
