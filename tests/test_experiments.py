"""Every experiment config loads, locks, and builds its model (abstractly, no allocation)."""

import math
import os

import jax
import numpy as np
import pytest
from flax import nnx

from md4_jax import data as data_lib
from md4_jax.training import experiment as experiment_lib
from md4_jax import train
from md4_jax.model import make_model
from md4_jax.nn import SIZES
from md4_jax.sampling import validate_config
from train_configs import ROOT, load_experiment

EXPERIMENTS = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "experiments")) if f.endswith(".py"))


def test_the_issue_lists_every_experiment():
  assert set(EXPERIMENTS) >= {"demo", "kjv_tiny", "text8", "text8_genmd4", "owt_small", "owt_medium",
                              "owt_small_genmd4", "cifar10", "imagenet64"}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_builds(name):
  config = load_experiment(name)
  config.lock()
  with pytest.raises(AttributeError):
    config.train.nmu_steps = 1  # locked: unknown keys are refused
  info = data_lib.dataset_info(config.data)
  model = nnx.eval_shape(lambda: make_model(config, info, 0))
  params = nnx.state(model, nnx.Param)
  count = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
  validate_config(config.sampler)
  assert config.train.batch_size % config.train.grad_accum_steps == 0
  expected = {"text8": (80e6, 95e6), "owt_small": (150e6, 175e6), "owt_medium": (390e6, 440e6),
              "cifar10": (20e6, 40e6)}
  if name in expected:
    low, high = expected[name]
    assert low <= count <= high, f"{name}: {count / 1e6:.1f}M parameters"


def _shrunk(name: str):
  """Experiment `name` with everything that sets its step (objective, schedule, dropout, compute dtype, labels,
  outside embedding, gradient accumulation, optimizer) kept, at toy sizes: the 'tiny' network preset (a
  transformer: 1 layer, width 32), L <= 32, a batch of 2 per microbatch on one device."""
  config = load_experiment(name)
  if config.model.size in SIZES[config.model.kind] and config.model.size != "micro":
    config.model.size = "tiny"
  if config.model.kind == "transformer":
    config.model.network.update(num_layers=1, num_heads=2, width=32)
  if config.data.get("seq_len"):
    config.data.seq_len = min(config.data.seq_len, 32)
  if config.model.kind == "uvit":  # the tiny preset's DiT grid is 8 x 8; the data fixes the image size
    config.model.network.image_size = data_lib.dataset_info(config.data).data_shape[0]
  config.train.batch_size = 2 * config.train.grad_accum_steps
  config.mesh.data, config.mesh.fsdp = 1, 1
  return config


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_trains_a_step(name):
  """Two real training steps of every shipped experiment: finite losses, a gradient, updated parameters (a crash
  that only one config's combination of features triggers, such as dropout inside the step, fails here). The
  first step's learning rate is 0 (warmup starts there), so parameters move at the second."""
  config = _shrunk(name)
  exp = experiment_lib.build(config)
  rng = np.random.default_rng(0)
  local = {"x": rng.integers(0, exp.info.vocab_size, (config.train.batch_size,) + tuple(exp.info.data_shape))}
  if exp.info.num_classes:
    local["label"] = rng.integers(0, exp.info.num_classes, (config.train.batch_size,))
  state = exp.init_state()
  before = jax.tree.map(np.asarray, state.params)
  step_fn, batch = train.jit_train_step(exp), exp.global_batch(local)
  for _ in range(2):
    state, metrics = step_fn(state, batch)
    assert np.isfinite(float(metrics["objective"])) and np.isfinite(float(metrics["nelbo"]))
    assert float(metrics["grad_norm"]) > 0
  assert int(state.nonfinite) == 0 and int(state.step) == 2
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), before, state.params)
  assert any(jax.tree.leaves(changed)), f"{name}: no parameter moved"
