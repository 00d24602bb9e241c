"""FSDP: parameter sharding rules, per-device state bytes against a memory bound, and fsdp = 8 training.

The bound is simulated on the 8 fake CPU devices: a device may hold half of the replicated train state
(parameters, EMA, Adam moments). Data parallelism (fsdp = 1) needs all of it on every device; fsdp = 8 needs
about an eighth. The bound covers the state, which is what the sharding rules decide; the step's temporaries
(activations, gathered weights, gradients) come on top in both layouts.
"""

import collections
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from md4_jax.training import experiment, sharding
from md4_jax import train
from md4_jax.nn import axes
from md4_jax.nn.layers import partitioned
from train_configs import tiny_config, train_and_restore


class _Probe(nnx.Module):
  """Parameters whose logical names give the rules something, or nothing, to shard."""

  def __init__(self):
    param = lambda shape, names: nnx.Param(partitioned(nnx.initializers.zeros_init(), names)(
        jax.random.key(0), shape))
    self.ruled = param((32, 96), (axes.EMBED, axes.MLP))             # 'embed' -> fsdp
    self.unruled = param((16, 64), (axes.COND, axes.MLP))            # nothing -> largest dim, 64
    self.tie = param((24, 24), (axes.COND, axes.COND))               # equal sizes -> the first
    self.odd_embed = param((12, 40, 7), (axes.EMBED, axes.MLP, None))  # 12 % 8 != 0 -> 40
    self.indivisible = param((27, 12), (axes.VOCAB, axes.COND))      # no dim divisible by 8 -> whole
    self.vector = param((64,), (axes.COND,))


def _specs(data: int, fsdp: int) -> dict:
  mesh = sharding.make_mesh(tiny_config(**{"mesh.data": data, "mesh.fsdp": fsdp}).mesh)
  _, abstract = nnx.split(nnx.eval_shape(_Probe), nnx.Param)
  return {k: tuple(s.spec) for k, s in sharding.param_shardings(abstract, mesh).items()}


def test_rules_first_then_the_largest_dimension_that_fsdp_divides():
  assert _specs(1, 8) == {
      "ruled": ("fsdp", None), "unruled": (None, "fsdp"), "tie": ("fsdp", None),
      "odd_embed": (None, "fsdp", None), "indivisible": (None, None), "vector": ("fsdp",)}
  assert _specs(2, 4)["odd_embed"] == ("fsdp", None, None)  # 12 % 4 == 0: the rule applies again
  assert all(not any(spec) for spec in _specs(8, 1).values())  # fsdp = 1: all replicated


def _bytes_per_device(tree) -> dict:
  """Bytes of `tree`'s arrays held by each device (summed over the shards each device holds)."""
  held = collections.Counter()
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      held[shard.device] += shard.data.nbytes
  return held


def _nbytes(leaf) -> int:
  return math.prod(leaf.shape) * jnp.dtype(leaf.dtype).itemsize


def _config(data: int, fsdp: int, **overrides):
  return tiny_config(**{"mesh.data": data, "mesh.fsdp": fsdp, "train.num_steps": 6, "train.checkpoint_every": 6,
                        "train.log_every": 1, **overrides})


def test_state_exceeds_the_device_budget_replicated_and_fits_with_fsdp():
  exps = {fsdp: experiment.build(_config(8 // fsdp, fsdp)) for fsdp in (1, 8)}
  replicated = sum(_nbytes(a) for a in jax.tree.leaves(exps[1].abstract_state))
  budget = replicated // 2  # each device has room for half of the replicated train state
  # Leaves with no dimension that 8 divides (scalars, the rng) stay whole; every other leaf is split 8 ways.
  whole = sum(_nbytes(a) for a in jax.tree.leaves(exps[8].abstract_state)
              if not any(size % 8 == 0 for size in a.shape))
  assert whole < replicated / 1000

  states = {fsdp: exp.init_state() for fsdp, exp in exps.items()}
  held = {fsdp: _bytes_per_device(state) for fsdp, state in states.items()}
  assert len(held[1]) == len(held[8]) == 8
  assert set(held[1].values()) == {replicated} and replicated > budget
  assert max(held[8].values()) == whole + (replicated - whole) // 8 <= budget

  # The compiled step agrees: its per-device arguments are the state shard plus the batch shard. (Compiled
  # for the arguments train_and_evaluate passes, so the next test finds it in the compilation cache.)
  for fsdp, exp in exps.items():
    batch = {"x": jax.ShapeDtypeStruct((16, 32), jnp.int32, sharding=sharding.batch_sharding(exp.mesh))}
    with jax.set_mesh(exp.mesh):
      memory = train.jit_train_step(exp).lower(states[fsdp], batch).compile().memory_analysis()
    assert memory.argument_size_in_bytes == max(held[fsdp].values()) + 16 * 32 * 4 // 8
    assert (memory.argument_size_in_bytes <= budget) == (fsdp == 8)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_fsdp_training_matches_data_parallel(tmp_path, scan_layers):
  """fsdp = 8 against data = 8 on the same 8 devices: the same per-step losses and final parameters (also with
  the blocks stacked under a scan, whose leading layer axis stays whole)."""
  curves, params = {}, {}
  for fsdp in (1, 8):
    workdir = str(tmp_path / f"fsdp{fsdp}")
    config = _config(8 // fsdp, fsdp)
    config.model.network.update(num_layers=2, scan_layers=scan_layers)
    lines, params[fsdp] = train_and_restore(config, workdir, 6)
    curves[fsdp] = [[line[k] for k in ("train/objective", "train/nelbo", "train/grad_norm")] for line in lines]
  query = params[8]["network"]["blocks"] if scan_layers else params[8]["network"]["blocks"][0]
  assert tuple(query["attention"]["query"]["kernel"].sharding.spec) == ((None,) if scan_layers else ()) + ("fsdp", None)
  assert len(curves[8]) == 6 and np.all(np.isfinite(curves[8]))
  np.testing.assert_allclose(curves[8], curves[1], rtol=2e-5)
  for a, b in zip(jax.tree.leaves(params[8]), jax.tree.leaves(params[1]), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
