"""Joining a multi-process run (one process per host, or several on one machine) with `jax.distributed`.

The coordinator address, process count and process id come from the arguments or, where those are None,
from BP_JAX_COORDINATOR, BP_JAX_NUM_PROCESSES and BP_JAX_PROCESS_ID. The address "auto" leaves all three
to JAX's cluster detection (Cloud TPU pods, SLURM, Open MPI). Every wait is bounded by `timeout_s`.
"""

import json
import os
import socket
import time

import jax
import numpy as np

from bp_jax.cli._args import UsageError

ENVIRONMENT = {
    "coordinator_address": "BP_JAX_COORDINATOR",
    "num_processes": "BP_JAX_NUM_PROCESSES",
    "process_id": "BP_JAX_PROCESS_ID",
}


class DistributedError(UsageError):
    """A multi-process run that cannot start: missing or bad settings, or a coordinator that never answers."""


def settings(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> dict:
    """The three settings, each from its argument or else its environment variable (None if neither)."""
    given = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
    for name, variable in ENVIRONMENT.items():
        if given[name] is None and os.environ.get(variable):
            text = os.environ[variable]
            try:
                given[name] = text if name == "coordinator_address" else int(text)
            except ValueError:
                raise DistributedError(f"{variable} must be an integer, got {text!r}") from None
    return given


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout_s: int = 120,
) -> bool:
    """Join the run described by the settings (see `settings`); False, doing nothing, when none is set.

    Processes other than 0 first wait up to `timeout_s` for the coordinator's port to accept a connection
    and raise DistributedError if it never does. `timeout_s` also bounds JAX's own wait for every process
    to register; past it JAX ends the process (it cannot be caught), so no run hangs.
    """
    given = settings(coordinator_address, num_processes, process_id)
    if all(value is None for value in given.values()):
        return False
    if given["coordinator_address"] == "auto":
        jax.distributed.initialize(initialization_timeout=timeout_s)
        return True
    missing = [ENVIRONMENT[name] for name, value in given.items() if value is None]
    if missing:
        raise DistributedError(
            f"a multi-process run needs the coordinator address, process count and process "
            f"id; missing {', '.join(missing)} (or their flags)"
        )
    address, count, index = given["coordinator_address"], given["num_processes"], given["process_id"]
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise DistributedError(f"the coordinator address must be HOST:PORT, got {address!r}")
    if count < 1 or not 0 <= index < count:
        raise DistributedError(f"process id must be in [0, {count}) for {count} processes, got {index}")
    if index != 0:
        _wait_for(host, int(port), timeout_s, f"process {index} of {count}")
    jax.distributed.initialize(address, count, index, initialization_timeout=timeout_s)
    return True


def _wait_for(host: str, port: int, timeout_s: float, who: str) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(1.0, deadline - time.monotonic()))):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise DistributedError(
                    f"the coordinator {host}:{port} did not answer within {timeout_s:g} s "
                    f"({who}); start process 0 there first, or check the address"
                ) from None
            time.sleep(0.2)


def gathered_json(value) -> list:
    """Every process's JSON-able `value`, in process order, by two all-gathers: the lengths of the JSON texts,
    then the texts padded to the longest."""
    from jax.experimental import multihost_utils

    text = np.frombuffer(json.dumps(value, default=lambda item: item.tolist()).encode(), np.uint8)
    with jax.enable_x64(True):  # the lengths stay int64
        lengths = np.asarray(multihost_utils.process_allgather(np.int64(len(text)))).reshape(-1)
        padded = np.zeros(int(lengths.max()), np.uint8)
        padded[: len(text)] = text
        everyone = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(lengths), -1)
    return [json.loads(row[:length].tobytes()) for row, length in zip(everyone, lengths, strict=True)]


def agree(options: dict) -> None:
    """DistributedError in every process where some process was started with other `options` (flag → value) than
    process 0: the first such process and its flags' values against process 0's, in one line. One process: nothing."""
    if jax.process_count() == 1:
        return
    everyone = gathered_json(options)
    for index, other in enumerate(everyone):
        differ = sorted(name for name in everyone[0].keys() | other.keys() if everyone[0].get(name) != other.get(name))
        if differ:
            shown = ", ".join(
                f"--{name.replace('_', '-')} {_shown(other, name)} against {_shown(everyone[0], name)}"
                for name in differ
            )
            raise DistributedError(
                f"process {index} was started with other options than process 0 ({shown}); start every process "
                "with the same command but its --process-id"
            )


def _shown(options: dict, name: str) -> str:
    return "(not given)" if options.get(name) is None else str(options[name])


def host_local(tree):
    """Numpy copies of a pytree of fully replicated (or single-device) arrays, readable in every process."""
    return jax.tree.map(
        lambda leaf: np.asarray(leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf), tree
    )
