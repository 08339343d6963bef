"""Hand-built search trees for tests."""

from qstar_dagster.generation.base import Completion
from qstar_dagster.search.tree import Tree
from qstar_dagster.tasks.arith import generate_problems
from qstar_dagster.tasks.steps import LINE


def tree_of(steps_per_path: list[list[str]], seed: int = 3) -> Tree:
    """A tree over one built-in problem whose root-to-leaf paths are `steps_per_path`
    (paths that share first steps share their nodes)."""
    [problem] = generate_problems(1, seed=seed)
    tree = Tree("t", problem, problem.problem + "\n", LINE, 6)
    for steps in steps_per_path:
        node = tree.root
        for text in steps:
            node = next((tree.nodes[c] for c in node.children if tree.nodes[c].text == text), None) or \
                tree.add_child(node, Completion(text, 3, -1.0, "stop", stop_string="\n"))
    return tree
