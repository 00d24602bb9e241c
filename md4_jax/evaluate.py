"""Evaluation: the NELBO of a split in bits per token, with the EMA parameters of a training state."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from md4_jax import checkpoint
from md4_jax import data as data_lib
from md4_jax import experiment as experiment_lib
from md4_jax import sharding
from md4_jax.diffusion import bits_per_token


def eval_step(params, batch: dict, key: jax.Array, *, graphdef) -> jax.Array:
  """Per-example NELBO in nats [B] under `params`, dropout off."""
  model = nnx.merge(graphdef, params)
  return model.loss(batch["x"], key, batch.get("label")).nelbo


def make_eval_fn(exp: experiment_lib.Experiment):
  return jax.jit(functools.partial(eval_step, graphdef=exp.graphdef),
                 in_shardings=(exp.params_sharding, sharding.batch_sharding(exp.mesh), None),
                 out_shardings=sharding.batch_sharding(exp.mesh))


def evaluate(exp: experiment_lib.Experiment, eval_fn, params, split: str = "validation") -> dict[str, float]:
  """NELBO in bits per token over `split` (or its first train.eval_batches batches).

  The masks and times come from config.seed, the same at every call: evaluations of one run compare
  like with like; another seed gives another Monte Carlo estimate.
  """
  config = exp.config
  dataset = data_lib.make_dataset(config.data, split, batch_size=config.train.eval_batch_size // jax.process_count(),
                                  seed=config.seed, shard_index=jax.process_index(),
                                  shard_count=jax.process_count())
  key = jax.random.key(config.seed + 1)
  total, count = 0.0, 0
  for index, local in enumerate(dataset):
    if index == config.train.eval_batches:
      break
    nelbo = eval_fn(params, exp.global_batch(local), jax.random.fold_in(key, index))
    total += float(jnp.sum(nelbo))
    count += nelbo.shape[0]
  if count == 0:
    raise ValueError(f"no evaluation batch: train.eval_batches={config.train.eval_batches}")
  return {"eval/bits_per_token": float(bits_per_token(total / count, math.prod(exp.info.data_shape))),
          "eval/examples": float(count)}


def evaluate_checkpoint(config, workdir: str, step: int | None = None, split: str = "validation") -> dict:
  """Restores checkpoint `step` (default: the latest) of `workdir` and evaluates its EMA parameters."""
  exp = experiment_lib.build(config)
  manager = checkpoint.make_manager(workdir, read_only=True)
  step = manager.latest_step() if step is None else step
  if step is None:
    raise ValueError(f"no checkpoint in {manager.directory}; train first (python -m md4_jax.train ...)")
  state, _ = checkpoint.restore(manager, step, checkpoint.abstract_with_shardings(
      exp.abstract_state, exp.state_sharding), checkpoint.fingerprint(config))
  manager.close()
  return evaluate(exp, make_eval_fn(exp), state.ema_params, split)
