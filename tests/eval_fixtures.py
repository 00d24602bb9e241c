"""Checkpoints for evaluation tests: an untrained model saved as step 0, so its outputs are known exactly."""

from md4_jax.training import checkpoint
from md4_jax import data as data_lib
from md4_jax.training import experiment as experiment_lib
from train_configs import tiny_config


def ar_config(gpt2_vocab: bool = False):
  """The tiny config as a causal 'ar' model; with gpt2_vocab, on 'owt' (V = 50257) instead of characters (V = 27)."""
  config = tiny_config(**{"diffusion.objective": "ar"})
  if gpt2_vocab:
    config.data = data_lib.default_data_config("owt")
    config.data.seq_len = 32
    config.train.eval_batch_size = 8
  return config


def save_initial_checkpoint(config, workdir: str) -> None:
  """Saves the freshly initialised state as step 0. Its output head is zero, so every log-probability is -ln V."""
  exp = experiment_lib.build(config)
  manager = checkpoint.make_manager(workdir, config.train)
  checkpoint.save(manager, 0, exp.init_state(), {}, checkpoint.fingerprint(config))
  manager.wait_until_finished()
  manager.close()
