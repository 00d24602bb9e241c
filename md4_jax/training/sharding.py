"""The device mesh ('data', 'fsdp') and the shardings of parameters, optimizer state and batches.

Parameters carry logical axis names (md4_jax.nn.axes); `RULES` maps them to mesh axes. With fsdp = 1 every
parameter is replicated; with fsdp > 1 the dimensions named 'embed' / 'channels' are split over 'fsdp'
(a dimension that the axis size does not divide stays whole). A parameter that the rules leave whole (the
conditioning MLP, or a width that fsdp does not divide) has its largest dimension that fsdp divides split over
'fsdp' instead, so parameters and optimizer state take about 1/fsdp of the replicated bytes per device. Batches
are split over all devices.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from md4_jax.nn import axes

MESH_AXES = ("data", "fsdp")


def make_mesh(mesh_config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """A mesh with axes ('data', 'fsdp') over all devices of all processes (data = -1 fills).

  A single process may ask for fewer devices (data x fsdp < device count): the first ones are used.
  """
  n = jax.device_count()
  fsdp = mesh_config.fsdp
  data = n // fsdp if mesh_config.data == -1 else mesh_config.data
  size = data * fsdp
  if fsdp < 1 or data < 1 or size > n or (size < n and jax.process_count() > 1) or n % fsdp:
    raise ValueError(f"mesh data={mesh_config.data} x fsdp={fsdp} does not fit the {n} devices of "
                     f"{jax.process_count()} process(es) (use data=-1 to fill)")
  return jax.make_mesh((data, fsdp), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2,
                       devices=jax.devices()[:size])


def _mesh_spec(logical: tuple, shape: tuple[int, ...], mesh) -> P:
  """Mesh axes of one parameter: its logical names through RULES, else its largest fsdp-divisible dimension."""
  rules = dict(axes.RULES)
  used, out = set(), []
  for name, size in zip(logical, shape):
    mesh_axis = rules.get(name) if name is not None else None
    if (mesh_axis not in mesh.shape or mesh_axis in used or mesh.shape[mesh_axis] == 1
        or size % mesh.shape[mesh_axis]):
      mesh_axis = None
    used.add(mesh_axis)
    out.append(mesh_axis)
  fsdp = mesh.shape.get("fsdp", 1)
  divisible = [i for i, size in enumerate(shape) if size % fsdp == 0]
  if fsdp > 1 and not any(out) and divisible:
    out[max(divisible, key=lambda i: shape[i])] = "fsdp"
  return P(*out)


def param_shardings(abstract_params: nnx.State, mesh) -> dict:
  """Pure dict of NamedSharding for an abstract nnx Param state (from nnx.eval_shape + nnx.split)."""
  specs = nnx.to_pure_dict(nnx.get_partition_spec(abstract_params))
  shapes = nnx.to_pure_dict(abstract_params)
  return jax.tree.map(lambda spec, a: NamedSharding(mesh, _mesh_spec(tuple(spec), a.shape, mesh)),
                      specs, shapes, is_leaf=lambda s: isinstance(s, P))


def path_key(path) -> tuple:
  """The names of a pytree path's keys (dict key, sequence index or attribute name)."""
  return tuple(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)


def shardings_like_params(tree, params_sharding: dict, mesh):
  """Shardings for a pytree holding params-shaped leaves (optimizer moments): matched by path suffix."""
  by_path = {path_key(p): s for p, s in jax.tree_util.tree_flatten_with_path(params_sharding)[0]}

  def pick(path, leaf):
    key = path_key(path)
    for i in range(len(key)):
      sharding = by_path.get(key[i:])
      if sharding is not None and len(sharding.spec) <= np.ndim(leaf):
        return sharding
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(pick, tree)


def batch_sharding(mesh) -> NamedSharding:
  """The batch dimension split over every device."""
  return NamedSharding(mesh, P(MESH_AXES))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
