"""Everything a training run touches after step 1, checked before it: a bad value fails in seconds, not at the
first `eval_every` / `sample_every` step after hours of unsaved work.

Checks the loop's intervals, the evaluation split (it must give a batch) and the evaluation step, the sampler
config and the sampling of the periodic samples (traced with abstract parameters: nothing is compiled or run),
and that the checkpoint folder is writable.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from md4_jax.training import experiment as experiment_lib
from md4_jax import generate
from md4_jax.evaluation import nelbo
from md4_jax import objectives
from md4_jax import sampling


def check_intervals(train) -> None:
  """The loop's cadences: log_every >= 1, the other *_every >= 0 (0 = never), keep >= 1, eval_batches."""
  if train.log_every < 1:
    raise ValueError(f"train.log_every must be >= 1; got {train.log_every}")
  for name in ("eval_every", "sample_every", "checkpoint_every", "keep_period"):
    if train[name] < 0:
      raise ValueError(f"train.{name} must be >= 0 (0 = never); got {train[name]}")
  if train.keep is not None and train.keep < 1:
    raise ValueError(f"train.keep (checkpoints kept) must be >= 1; got {train.keep}")
  if train.eval_every and not (train.eval_batches == -1 or train.eval_batches >= 1):
    raise ValueError(f"train.eval_batches must be >= 1 or -1 (the whole split); got {train.eval_batches}")
  if train.sample_every and train.num_samples < 1:
    raise ValueError(f"train.num_samples must be >= 1 when train.sample_every > 0; got {train.num_samples}")


def check_evaluation(exp: experiment_lib.Experiment, eval_fn) -> None:
  """The validation split gives one global batch of train.eval_batch_size, and eval_fn traces on it."""
  config = exp.config
  if next(nelbo.local_batches(config, config.data, "validation", whole_split=False), None) is None:
    raise ValueError(f"the validation split of {config.data.name!r} gives no batch of train.eval_batch_size="
                     f"{config.train.eval_batch_size}; lower it or set train.eval_every=0")
  jax.eval_shape(eval_fn, exp.abstract_state.ema_params, exp.abstract_batch(config.train.eval_batch_size),
                 jax.random.key(0))


def check_sampling(exp: experiment_lib.Experiment) -> None:
  """The periodic samples: the sampler config is valid for this model and the sampler traces on it."""
  config = exp.config
  objective = objectives.get(config.diffusion.objective)
  if objective.sampler is None:
    return  # generate.training_samples writes nothing for these
  objective.check_samplable(config.sampler.name)
  sampling.validate_config(config.sampler)
  z_init = jax.ShapeDtypeStruct((config.train.num_samples,) + tuple(exp.info.data_shape), np.int32)

  def draw(params, z_init):  # one batch of generate.generate, traced (z_init abstract: no value checks run)
    functions = generate.sampler_functions(exp.graphdef, params, objective, None, generate.Guide(), None)
    return generate.sample_batch(objective, functions, jax.random.key(0), 0, z_init, config.sampler)[0]

  tokens = jax.eval_shape(draw, exp.abstract_state.ema_params, z_init)
  exp.info.decode(np.zeros(tokens.shape, np.int32))


def check_writable(workdir: str) -> None:
  folder = os.path.join(workdir, "checkpoints")
  if "://" not in folder and os.path.isdir(folder) and not os.access(folder, os.W_OK):
    raise ValueError(f"the checkpoint folder {folder} is not writable")


def check(exp: experiment_lib.Experiment, eval_fn, workdir: str) -> None:
  """Raises ValueError naming the first bad value the run would meet after step 1."""
  train = exp.config.train
  check_intervals(train)
  if train.eval_every:
    check_evaluation(exp, eval_fn)
  if train.sample_every:
    check_sampling(exp)
  check_writable(workdir)
