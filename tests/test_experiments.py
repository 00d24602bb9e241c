"""Every experiment config loads, locks, and builds its model (abstractly, no allocation)."""

import math
import os

import jax
import pytest
from flax import nnx

from md4_jax import data as data_lib
from md4_jax.model import make_model
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
