"""tests/train_configs.tiny_config as an experiment file, for command-line runs (tests/test_multiprocess.py).

    PYTHONPATH=.:tests python -m md4_jax.train --config tests/tiny_experiment.py --workdir DIR
"""

from train_configs import tiny_config


def get_config():
  return tiny_config()
