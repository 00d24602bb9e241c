"""GenMD4-S on OpenWebText (paper: validation perplexity <= 21.80): owt_small.py with learnable exponents.

    python -m md4_jax.train --config experiments/owt_small_genmd4.py --workdir DIR --config.data.path=/data/owt
"""

import os

from md4_jax.training import config_base


def get_config():
  config = config_base.load_experiment(os.path.join(os.path.dirname(__file__), "owt_small.py"))
  config.diffusion.objective = "genmd4"
  config.diffusion.power_init = 1.0
  return config
