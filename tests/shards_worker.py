"""Run by tests/test_shards.py: `shards.load` of a table and a float64 `fit` on its blocks, then `bp-jax train
--shard-data` on WARM-UP (in this process: a multi-process run's process when several), in one process over its
JAX_NUM_CPU_DEVICES devices or as one of several processes. argv: TABLE COORDINATOR PROCESSES ID (COORDINATOR "-" for
one process) WARM-UP (a table of the same columns, loaded first: the imports and the all-gathers' programs are then
in place) OUT (the command's run folder, which process 0 writes). Prints, last, one JSON object: the params, the
scaling, the rows, the fingerprint, the command's exit status, and the memory the load of TABLE took: the peak
resident size after it less the resident size before it, and tracemalloc's peak (numpy's buffers), MiB."""

import json
import resource
import sys
import tracemalloc

import jax
import numpy as np

import bp_jax
from bp_jax.cli import distributed, main, runs, shards

table, coordinator, warm_up, out = sys.argv[1], sys.argv[2], sys.argv[5], sys.argv[6]
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
with jax.enable_x64(True):
    model = bp_jax.mlp((split.x_train.shape[1], 4, 1), "tanh")
    result = bp_jax.fit(
        bp_jax.loss_fn(model), model.init(jax.random.key(0)), rows.x, rows.y, steps=40, batch_size=8, lr=0.05,
        key=jax.random.key(1), mesh=mesh, shard_rows=rows.counts, chunk_size=40,
    )  # fmt: skip
    params = distributed.host_local(result.params)
train = [
    "train",
    "--data",
    warm_up,
    "--shard-data",
    "--devices",
    "all",
    "--steps",
    30,
    "--batch-size",
    8,
    "--out",
    out,
    "--seed",
    3,
]
status = main(list(map(str, train)))  # a multi-process run already joined: the command takes it as it is
print(
    json.dumps(
        {
            "params": [np.asarray(leaf, np.float64).tolist() for leaf in jax.tree.leaves(params)],
            "dtypes": sorted({str(leaf.dtype) for leaf in jax.tree.leaves(params)}),
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
