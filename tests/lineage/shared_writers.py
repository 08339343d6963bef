"""The writer and reader processes of tests/lineage/test_shared_store.py, in a module of their
own: a spawned process imports only this and the store, not Dagster (about 2 s less each)."""

from qstar_dagster.lineage import LineageStore
from qstar_dagster.tasks.arith import generate_problems

BATCHES, SHARED_NODES, OWN_NODES = 6, 40, 10


def tree_nodes(writer: int, batch: int) -> list[dict]:
    """One tree's nodes: SHARED_NODES that every writer writes (the same content ids, as
    two workers labeling the same steps would) and OWN_NODES only this writer writes."""
    ids = [f"n_{batch}_{i}" for i in range(SHARED_NODES)] + [f"n_{batch}_w{writer}_{j}" for j in range(OWN_NODES)]
    return [{"node_id": i, "tree_id": f"t_{batch}", "prompt_id": "p", "parent_id": None if k == 0 else f"n_{batch}_0",
             "depth": int(k > 0), "text": i, "stats": {"writer_independent": True}} for k, i in enumerate(ids)]


def tree_labels(writer: int, batch: int) -> list[dict]:
    return [{"node_id": n["node_id"], "labeler": "mc", "kind": "soft", "value": 0.5, "n_rollouts": 8, "n_correct": 4,
             "cost_tokens": 10} for n in tree_nodes(writer, batch)[1:]]


def write_all(store: LineageStore, writer: int) -> None:
    problems = generate_problems(30, seed=writer % 3)  # writers 0, 3, 6 share their problems
    store.begin_run(f"run-{writer}", "test", f"w{writer}", None, None)
    with store.transaction() as con:
        store.write_prompt_set(con, f"set-{writer % 3}", "test", problems, f"run-{writer}")
    for n in range(BATCHES):
        with store.transaction() as con:  # nodes and their labels commit together
            store.insert(con, "nodes", tree_nodes(writer, n))
            store.insert(con, "step_labels", tree_labels(writer, n))
    with store.transaction() as con:
        store.end_run(con, f"run-{writer}", "test", f"w{writer}")


def write_process(url: str, writer: int, errors) -> None:
    try:
        write_all(LineageStore(url), writer)
    except Exception as e:  # noqa: BLE001  (reported to the test, which fails on any)
        errors.put(f"writer {writer}: {type(e).__name__}: {e}")


def read_process(url: str, stop, errors, seen) -> None:
    store = LineageStore(url)
    last = 0
    try:
        while not stop.is_set():
            [(n,)] = store.query("SELECT count(*) FROM nodes")[1]
            store.lineage("n_0_1/mc/soft")
            if n < last:
                errors.put(f"reader saw nodes go from {last} to {n}")
            last = n
            seen.append(n)
    except Exception as e:  # noqa: BLE001
        errors.put(f"reader: {type(e).__name__}: {e}")
