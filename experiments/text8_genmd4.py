"""GenMD4 on text8 (paper: test BPC <= 1.34): text8.py with learnable per-token exponents (w = 1 at start).

    python -m md4_jax.train --config experiments/text8_genmd4.py --workdir DIR --config.data.path=/data/text8.zip
"""

import os

from md4_jax.training import config_base


def get_config():
  config = config_base.load_experiment(os.path.join(os.path.dirname(__file__), "text8.py"))
  config.diffusion.objective = "genmd4"
  config.diffusion.power_init = 1.0
  return config
