"""MD4-M on OpenWebText (paper: validation perplexity <= 16.64): 24 layers, 16 heads, width 1024, L=1024.

    python -m md4_jax.train --config experiments/owt_medium.py --workdir DIR --config.data.path=/data/owt \
        --config.mesh.fsdp=8
"""

import os

from md4_jax.training import config_base


def get_config():
  config = config_base.load_experiment(os.path.join(os.path.dirname(__file__), "owt_small.py"))
  config.model.size = "medium"
  return config
