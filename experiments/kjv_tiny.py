"""A tiny MD4 on the King James Bible (../shared/data/kjv.txt.gz, text8-normalised, 90/5/5 split); CPU-sized.

    python -m md4_jax.train --config experiments/kjv_tiny.py --workdir /tmp/kjv_tiny

The setup of benchmarks/train.py: L=128, 4 layers, 4 heads, width 128, gated MLP, batch 32, lr 1e-3, warmup 100,
cosine over 1500 steps, EMA 0.99, linear schedule. The public md4 code reaches 2.73 bits per character at step
1500 on this setup.

The masking-schedule ablation (md4 Table 4's schedules, 2 seeds each; BENCHMARKS.md "Sweeps"):

    python -m md4_jax.sweep --config experiments/kjv_tiny.py --workdir /tmp/kjv_schedules
"""

import os

from md4_jax.training import config_base
from md4_jax.sweeps import sweep_spec

KJV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "kjv.txt.gz")


def get_config():
  config = config_base.get_base_config()
  config.data.path = os.path.normpath(KJV)
  config.data.seq_len = 128
  config.model.size = "tiny"  # 4 layers, 4 heads, width 128
  config.optim.lr = 1e-3
  config.optim.warmup_steps = 100
  config.optim.ema_decay = 0.99
  config.train.num_steps = 1500
  config.train.batch_size = 32
  config.train.log_every = 100
  config.train.eval_every = 500
  config.train.eval_batch_size = 256
  config.train.sample_every = 1500
  config.train.checkpoint_every = 500
  config.sampler.num_steps = 128
  return config


def get_sweep():
  return sweep_spec.product(
      sweep_spec.axis("diffusion.schedule", ("linear", "cosine", "poly2", "poly0.5", "geometric")),
      sweep_spec.axis("seed", (0, 1)))
