"""Small configs for training-loop tests: the demo experiment shrunk to seconds on CPU."""

import os

from md4_jax.training import config_base

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_experiment(name: str):
  return config_base.load_experiment(os.path.join(ROOT, "experiments", f"{name}.py"))


def tiny_config(num_steps: int = 8, **overrides):
  config = load_experiment("demo")
  config.data.seq_len = 32
  config.model.network.update(num_layers=1, num_heads=2, width=32, time_conditioning=True)
  config.optim.warmup_steps = 2
  config.train.update(num_steps=num_steps, batch_size=16, log_every=2, eval_every=0, eval_batch_size=16,
                      eval_batches=2, sample_every=0, num_samples=2, checkpoint_every=4, keep=10,
                      async_checkpoint=False)
  config.sampler.num_steps = 8
  config.sampler.cache = False
  config.mesh.data = 1  # one device: fast; the 8-device paths are tested where they matter
  for key, value in overrides.items():
    group, field = key.split(".")
    config[group][field] = value
  return config


def train_and_restore(config, workdir: str, step: int) -> tuple[list[dict], dict]:
  """Trains `config` in `workdir`; returns (metrics.jsonl rows, the parameters of checkpoint `step`, placed as
  the config's shardings say)."""
  import json  # pylint: disable=g-import-not-at-top
  from md4_jax import train  # pylint: disable=g-import-not-at-top
  from md4_jax.training import checkpoint, experiment  # pylint: disable=g-import-not-at-top
  train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  exp = experiment.build(config)
  manager = checkpoint.make_manager(workdir, read_only=True)
  state, _ = checkpoint.restore(manager, step, checkpoint.abstract_with_shardings(
      exp.abstract_state, exp.state_sharding), checkpoint.fingerprint(config))
  manager.close()
  return rows, state.params
