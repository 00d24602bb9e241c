"""What a config implies before any array exists: mesh, data facts, model graph, abstract state, shardings.

Shared by training, evaluation and sampling, so each restores checkpoints onto the devices at hand.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

from md4_jax.training import checkpoint
from md4_jax import data as data_lib
from md4_jax import objectives
from md4_jax.training import optim
from md4_jax.training import sharding
from md4_jax.training import train_state as train_state_lib
from md4_jax.data import DataInfo
from md4_jax.model import make_model


@dataclasses.dataclass(frozen=True)
class Experiment:
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  info: DataInfo
  graphdef: Any                       # nnx GraphDef of the DiffusionModel
  tx: optax.GradientTransformation
  abstract_state: train_state_lib.TrainState  # ShapeDtypeStructs
  state_sharding: train_state_lib.TrainState  # NamedShardings, same structure
  init_state: Callable[[], train_state_lib.TrainState]  # jitted: a fresh state, placed

  @property
  def tokens_per_example(self) -> int:
    """What bits per token divide by (md4_jax.objectives: L, or 1 for a label predictor)."""
    return objectives.get(self.config.diffusion.objective).tokens_per_example(self.info.data_shape)

  def global_batch(self, local: dict) -> dict:
    """This process's numpy batch -> global int32 jax arrays split over the mesh."""
    batch_sharding = sharding.batch_sharding(self.mesh)
    return {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v, np.int32))
            for k, v in local.items()}

  def abstract_batch(self, batch_size: int) -> dict:
    """The shapes and dtypes of `global_batch` for a global batch of `batch_size` examples."""
    batch = {"x": jax.ShapeDtypeStruct((batch_size,) + tuple(self.info.data_shape), np.int32)}
    if self.info.num_classes:
      batch["label"] = jax.ShapeDtypeStruct((batch_size,), np.int32)
    return batch


def check_batch_sizes(config: ml_collections.ConfigDict, mesh) -> None:
  t, n = config.train, mesh.size
  if t.num_steps < 1 or t.grad_accum_steps < 1:
    raise ValueError(f"train.num_steps and train.grad_accum_steps must be >= 1; got {t.num_steps}, "
                     f"{t.grad_accum_steps}")
  if t.batch_size % (n * t.grad_accum_steps):
    raise ValueError(f"train.batch_size={t.batch_size} must be divisible by devices ({n}) x "
                     f"train.grad_accum_steps ({t.grad_accum_steps})")
  if t.eval_batch_size % n:
    raise ValueError(f"train.eval_batch_size={t.eval_batch_size} must be divisible by the {n} devices")


def build(config: ml_collections.ConfigDict, *, inference: bool = False) -> Experiment:
  """The experiment of `config`; `inference` skips the training batch-size checks."""
  mesh = sharding.make_mesh(config.mesh)
  if not inference:
    check_batch_sizes(config, mesh)
  info = data_lib.dataset_info(config.data)
  make = lambda: make_model(config, info, config.seed)
  graphdef, abstract_params = nnx.split(nnx.eval_shape(make), nnx.Param)
  params_sharding = sharding.param_shardings(abstract_params, mesh)
  tx = optim.make_optimizer(config.optim, config.train.num_steps)
  create = lambda params: train_state_lib.create(params, tx, config.seed)
  abstract_state = jax.eval_shape(create, nnx.to_pure_dict(abstract_params))
  state_sharding = train_state_lib.TrainState(
      step=sharding.replicated(mesh), params=params_sharding, ema_params=params_sharding,
      opt_state=sharding.shardings_like_params(abstract_state.opt_state, params_sharding, mesh),
      rng=sharding.replicated(mesh), nonfinite=sharding.replicated(mesh))
  init_state = jax.jit(lambda: create(nnx.to_pure_dict(nnx.split(make(), nnx.Param)[1])),
                       out_shardings=state_sharding)
  return Experiment(config, mesh, info, graphdef, tx, abstract_state, state_sharding, init_state)


@dataclasses.dataclass(frozen=True)
class Restored:
  exp: Experiment
  params: dict   # EMA parameters (pure dict) placed on exp.mesh
  step: int


def restore_ema(config: ml_collections.ConfigDict, workdir: str, step: int | None = None) -> Restored:
  """EMA parameters of checkpoint `step` (None: the latest) of `workdir`, without the optimizer state.

  They are placed on the mesh of `config.mesh` over the present devices, whatever the device count of the
  run that wrote them. Raises ValueError if there is no such checkpoint, it belongs to another model config or
  it is damaged (naming the file and how); with `step` None a damaged newest checkpoint is named on stderr and
  the newest intact one used (left in place: a reader never moves checkpoints).
  """
  exp = build(config, inference=True)
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(directory):
    raise ValueError(f"no checkpoint directory {directory}: --workdir={workdir!r} holds no training run "
                     "(train first: python -m md4_jax.train --config ... --workdir ...)")
  manager = checkpoint.make_manager(workdir, read_only=True)
  try:
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
      raise ValueError(f"no checkpoint in {directory}; train first (python -m md4_jax.train ...)")
    if step is not None and step not in steps:
      raise ValueError(f"no checkpoint of step {step} in {directory}; available steps: {sorted(steps)}")
    target = {"ema_params": checkpoint.abstract_with_shardings(exp.abstract_state.ema_params,
                                                                exp.state_sharding.ema_params)}

    def restore_fn(candidate):
      checkpoint.check_meta(manager, candidate, checkpoint.fingerprint(config))
      return manager.restore(candidate, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True)))

    def on_damaged(candidate, how):
      message = f"checkpoint {directory}/{candidate} is damaged: {how}"
      if step is not None:
        raise ValueError(message)
      print(f"{message}; using the step before", file=sys.stderr, flush=True)

    found = checkpoint.first_intact(manager, steps if step is None else [step], restore_fn, on_damaged)
    if found is None:
      raise ValueError(f"every checkpoint in {directory} is damaged (steps {sorted(steps)})")
  finally:
    manager.close()
  return Restored(exp, found[1]["state"]["ema_params"], int(found[0]))
