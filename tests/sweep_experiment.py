"""tests/train_configs.tiny_config with a 2 x 2 sweep (schedule x seed), for command-line sweeps (tests/test_sweep.py).

    PYTHONPATH=.:tests python -m md4_jax.sweep --config tests/sweep_experiment.py --workdir DIR
"""

from md4_jax.sweeps import sweep_spec
from train_configs import tiny_config


def get_config():
  return tiny_config(num_steps=8, **{"train.eval_every": 4, "train.eval_batches": 1})


def get_sweep():
  return sweep_spec.product(sweep_spec.axis("diffusion.schedule", ("linear", "cosine")),
                            sweep_spec.axis("seed", (0, 1)))
