"""Demo: a tiny MD4 on the embedded corpus (pydoc_data.topics, text8-normalised); CPU, under 2 minutes.

    python -m md4_jax.train --config experiments/demo.py --workdir /tmp/md4_demo

Writes checkpoints, metrics and samples (workdir/samples/*.txt) that look like words. A 4-member sweep (2 schedules
x 2 seeds) of it, one report in /tmp/md4_demo_sweep/report.md:

    python -m md4_jax.sweep --config experiments/demo.py --workdir /tmp/md4_demo_sweep
"""

from md4_jax.training import config_base
from md4_jax.sweeps import sweep_spec


def get_config():
  config = config_base.get_base_config()
  config.data.path = None             # the built-in corpus
  config.data.seq_len = 64
  config.model.size = "tiny"
  config.model.network.update(num_layers=2, num_heads=4, width=128)
  config.optim.lr = 2e-3
  config.optim.warmup_steps = 50
  config.optim.ema_decay = 0.99
  config.train.num_steps = 500
  config.train.batch_size = 64
  config.train.log_every = 100
  config.train.eval_every = 500
  config.train.eval_batch_size = 64
  config.train.eval_batches = 10
  config.train.sample_every = 500
  config.train.num_samples = 8
  config.train.checkpoint_every = 250
  config.sampler.num_steps = 128
  config.sampler.top_p = 0.8  # nucleus sampling (md4 rule): a tiny model's samples read more like words
  return config


def get_sweep():
  return sweep_spec.product(sweep_spec.axis("diffusion.schedule", ("linear", "cosine")), sweep_spec.axis("seed", (0, 1)))
