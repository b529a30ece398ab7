"""Run by tests/test_shards.py: `shards.load` of a table and a float64 `fit` on its blocks, the same of MIXED
(text, empty cells imputed, row and class weights, text classes, validation rows scored in the loop), then
`bp-jax train --shard-data --early-stopping` on MIXED (in this process: a multi-process run's process when several),
in one process over its JAX_NUM_CPU_DEVICES devices or as one of several processes. argv: TABLE COORDINATOR
PROCESSES ID (COORDINATOR "-" for one process) WARM-UP (a table of TABLE's columns, loaded first: the imports and
the all-gathers' programs are then in place) OUT (the command's run folder, which process 0 writes) MIXED. Prints,
last, one JSON object: the params, the scaling, the rows, the fingerprint (each of TABLE, and of MIXED under
"mixed"), the command's exit status, and the memory the load of TABLE took: the peak resident size after it less
the resident size before it, and tracemalloc's peak (numpy's buffers), MiB."""

import json
import resource
import sys
import tracemalloc

import jax
import numpy as np

import bp_jax
from bp_jax.cli import distributed, main, runs, shards

table, coordinator, warm_up, out, mixed = sys.argv[1], sys.argv[2], sys.argv[5], sys.argv[6], sys.argv[7]
processes, index = int(sys.argv[3]), int(sys.argv[4])
if processes > 1:
    distributed.initialize(coordinator, processes, index, timeout_s=60)


def resident_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


mesh = bp_jax.data_parallel_mesh()
shards.load(runs.Config(dataset=warm_up, batch_size=8, shard_data=True), mesh)
before = resident_mib()
tracemalloc.start()  # numpy's buffers (the table's float64 and float32 copies), not arrow's or XLA's
config, split, rows = shards.load(runs.Config(dataset=table, batch_size=8, shard_data=True), mesh)
traced_mib = tracemalloc.get_traced_memory()[1] / 2**20
tracemalloc.stop()
load_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before


def fitted(split, rows, loss) -> dict:
    """A float64 fit's params on the blocks, as lists, and their dtypes; with validation rows, scored every 5 steps
    (`early_stopping`, the validation losses too)."""
    with jax.enable_x64(True):
        model = bp_jax.mlp((split.x_train.shape[1], 4, split.scaling.outputs), "tanh")
        params = model.init(jax.random.key(0))
        rule = None
        if rows.validation is not None:
            rule = bp_jax.early_stopping(runs.loss(model, split.scaling, weighted=True), params, *rows.validation,
                                         steps_per_epoch=5, patience=100, epochs=8)  # fmt: skip
        result = bp_jax.fit(
            loss(model), params, rows.x, rows.y, steps=40, batch_size=8, lr=0.05, key=jax.random.key(1), mesh=mesh,
            shard_rows=rows.counts, chunk_size=40, stop_rule=rule,
        )  # fmt: skip
        params = distributed.host_local(result.params)
        scored = [] if rule is None else distributed.host_local(result.rule_state.losses).tolist()
    leaves = jax.tree.leaves(params)
    return {
        "params": [np.asarray(leaf).tolist() for leaf in leaves],
        "dtypes": sorted({str(leaf.dtype) for leaf in leaves}),
        "validation_losses": scored,
    }


params = fitted(split, rows, bp_jax.loss_fn)
options = ["--missing", "impute", "--sample-weight", "w", "--class-weight", "balanced", "--early-stopping"]
weighed = runs.Config(dataset=mixed, batch_size=8, shard_data=True, missing="impute", sample_weight="w",
                      class_weight="balanced", early_stopping=True)  # fmt: skip
_, mixed_split, mixed_rows = shards.load(weighed, mesh)
mixed_params = fitted(mixed_split, mixed_rows, lambda model: runs.loss(model, mixed_split.scaling, weighted=True))
train = ["train", "--data", mixed, *options, "--shard-data", "--devices", "all", "--epochs", 2, "--batch-size", 8]
train += ["--out", out, "--seed", 3]
status = main(list(map(str, train)))  # a multi-process run already joined: the command takes it as it is
print(
    json.dumps(
        {
            **params,
            "mixed": {
                **mixed_params,
                "scaling": mixed_split.scaling.to_record(),
                "rows": {
                    "train": mixed_rows.train,
                    "held_out": mixed_rows.held_out,
                    "blocks": mixed_rows.counts.tolist(),
                },
                "classes": mixed_rows.classes,
                "weights": mixed_rows.weights,
                "fingerprint": mixed_split.fingerprint,
            },
            "scaling": split.scaling.to_record(),
            "rows": {"train": rows.train, "held_out": rows.held_out, "blocks": rows.counts.tolist()},
            "local": {"train": len(split.x_train), "held_out": len(split.x_test)},
            "fingerprint": split.fingerprint,
            "status": status,
            "load_mib": load_mib,
            "traced_mib": traced_mib,
        }
    )
)
