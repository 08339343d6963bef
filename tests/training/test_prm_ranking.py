"""The PRM's sibling accuracy: does it rank a right next step above a wrong one from the same prefix?"""

import pytest

from qstar_dagster.labeling.oracle import oracle_labels
from qstar_dagster.labeling.pipeline import oracle_region
from qstar_dagster.training.prm import sibling_accuracy
from tests.trees import tree_of


def test_sibling_accuracy_counts_right_over_wrong_pairs_under_right_prefixes_only():
    tree = tree_of([[]])
    right = tree.problem.reference_solution.split("\n")
    a, b = right[0].rsplit("= ", 1)[0], int(right[0].rsplit("= ", 1)[1])
    wrong1, wrong2 = f"{a}= {b + 1}", f"{a}= {b + 2}"
    tree = tree_of([right[:2], [right[0], "1 + 1 = 2"], [wrong1], [wrong2, "5 + 5 = 10"], [wrong2, "5 + 5 = 11"]])
    truth = oracle_labels([tree])
    reference = {n: truth[n][0] for n in oracle_region([tree], {n: p for n, (_, p) in truth.items()})}
    by_text = {}
    for n in tree.nodes.values():
        if n.parent_id is not None:
            by_text[(tree.nodes[n.parent_id].text if tree.nodes[n.parent_id].parent_id else "", n.text)] = n.node_id
    scores = {by_text[("", right[0])]: 0.9, by_text[("", wrong1)]: 0.5, by_text[("", wrong2)]: 0.9,  # a win, a tie
              by_text[(right[0], right[1])]: 0.2, by_text[(right[0], "1 + 1 = 2")]: 0.7,  # a loss
              # under a wrong step: outside the region, however they score
              by_text[(wrong2, "5 + 5 = 10")]: 0.0, by_text[(wrong2, "5 + 5 = 11")]: 1.0}
    out = sibling_accuracy([tree], scores, reference)
    assert out == {"sibling_pairs": 3, "sibling_accuracy": pytest.approx(1.5 / 3)}
    # a PRM that ranks every right step first is perfect on the same pairs
    scores.update({k: 1.0 for k in reference if reference[k]} | {k: 0.0 for k in reference if not reference[k]})
    assert sibling_accuracy([tree], scores, reference)["sibling_accuracy"] == 1.0
    assert sibling_accuracy([tree], {}, reference) == {"sibling_pairs": 0, "sibling_accuracy": None}
