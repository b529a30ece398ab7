"""Data and ensemble parallelism by JAX's own SPMD engine: a one-axis device mesh named "data" (`fit`
splits each batch over it) or "models" (`fit_ensemble` splits its members over it).

`fit(..., mesh=mesh)` splits each batch along "data", replicates params and optimizer state, and leaves
the gradient reduction to the compiler; no collective is written by hand. A mesh may span several
processes (`jax.distributed`): every process then passes the same arrays and feeds only its own devices.
"""

from collections.abc import Sequence

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
MODELS_AXIS = "models"


def _one_axis_mesh(axis: str, devices: int | Sequence[jax.Device] | None) -> Mesh:
    available = jax.devices()
    if isinstance(devices, bool):
        raise TypeError(f"devices must be a number of devices, a sequence of devices or None, got {devices!r}")
    if devices is None:
        devices = available
    elif isinstance(devices, int):
        if not 1 <= devices <= len(available):
            raise ValueError(
                f"asked for {devices} devices, but JAX sees {len(available)} "
                f"({available[0].platform}); pass a number from 1 to {len(available)}"
            )
        devices = available[:devices]
    return jax.make_mesh((len(devices),), (axis,), axis_types=(AxisType.Auto,), devices=devices)


def data_parallel_mesh(devices: int | Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over `devices` with the single axis "data": `fit(..., mesh=mesh)` splits each batch over it.

    Args:
      devices: all of `jax.devices()` when None, the first n when an int, or a sequence of devices.

    Returns:
      The one-axis mesh.

    Raises:
      ValueError: more devices asked than JAX sees (or fewer than 1).
      TypeError: a bool for `devices`.

    Examples:
      >>> from bp_jax import data_parallel_mesh
      >>> mesh = data_parallel_mesh(1)
      >>> mesh.axis_names, dict(mesh.shape)
      (('data',), {'data': 1})
    """
    return _one_axis_mesh(DATA_AXIS, devices)


def ensemble_mesh(devices: int | Sequence[jax.Device] | None = None) -> Mesh:
    """As `data_parallel_mesh`, with the single axis "models": `fit_ensemble` splits its members over it.

    Args:
      devices: all of `jax.devices()` when None, the first n when an int, or a sequence of devices.

    Returns:
      The one-axis mesh.

    Raises:
      ValueError: more devices asked than JAX sees (or fewer than 1).
      TypeError: a bool for `devices`.

    Examples:
      >>> from bp_jax import ensemble_mesh
      >>> mesh = ensemble_mesh(1)
      >>> mesh.axis_names, dict(mesh.shape)
      (('models',), {'models': 1})
    """
    return _one_axis_mesh(MODELS_AXIS, devices)


def _axis_size(mesh: Mesh, axis: str) -> int:
    if axis not in mesh.shape:
        raise ValueError(f"the mesh needs an axis named {axis!r}, got axes {tuple(mesh.shape)}")
    return mesh.shape[axis]


def data_devices(mesh: Mesh) -> int:
    """The size of the mesh's "data" axis; ValueError if it has none."""
    return _axis_size(mesh, DATA_AXIS)


def member_devices(mesh: Mesh) -> int:
    """The size of the mesh's "models" axis; ValueError if it has none."""
    return _axis_size(mesh, MODELS_AXIS)


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def member_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (member) axis split over "models", the rest whole."""
    return NamedSharding(mesh, PartitionSpec(MODELS_AXIS))


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (example) axis split over "data", the rest whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def place(array, sharding: NamedSharding) -> jax.Array:
    """`array` laid out as `sharding`. Every process passes the whole array and transfers only the
    slices its own devices hold; an array already laid out that way is returned as is."""
    if isinstance(array, jax.Array) and array.sharding.is_equivalent_to(sharding, array.ndim):
        return array
    return jax.make_array_from_process_local_data(sharding, array, jax.numpy.shape(array))
