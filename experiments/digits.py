"""A tiny image MD4 on scikit-learn's bundled 8x8 digits (17 grey levels, 10 classes); CPU, no download.

    python -m md4_jax.train --config experiments/digits.py --workdir /tmp/md4_digits

The schedule ablation crossed with the sampler's time grid (md4: the cosine schedule matters for image quality):

    python -m md4_jax.sweep --config experiments/digits.py --workdir /tmp/digits_schedules \\
        --sample_quality 'grid=uniform,num_steps=16;grid=cosine,num_steps=16;grid=uniform,num_steps=64;grid=cosine,num_steps=64'
"""

from md4_jax.training import config_base
from md4_jax.sweeps import sweep_spec
from md4_jax.data import default_data_config


def get_config():
  config = config_base.get_base_config()
  config.data = default_data_config("digits")
  config.model.kind = "unet"
  config.model.size = "tiny"
  config.model.network = {"dropout": 0.0, "time_conditioning": True, "dtype": "float32", "remat": False,
                          "attention": "auto"}
  config.optim.update(lr=2e-3, warmup_steps=50, ema_decay=0.99)
  config.train.update(num_steps=1000, batch_size=64, eval_every=500, eval_batch_size=60, checkpoint_every=500,
                      sample_every=1000, num_samples=16, log_every=100)
  config.sampler.num_steps = 64
  return config


def get_sweep():
  return sweep_spec.axis("diffusion.schedule", ("linear", "cosine"))
