"""MD4 on CIFAR-10 (paper: test bits/dim <= 2.75, 28M parameters): the VDM-style U-Net, each channel value a token.

    python -m md4_jax.train --config experiments/cifar10.py --workdir DIR --config.data.path=/data/tfds

Paper App. J: 2M iterations, lr 4e-4 (the public config: 2e-4), batch 256, weight decay 0.01, warmup 100,
b2 0.99, dropout 0.1, EMA 0.9999; samples with T = 256.
"""

from md4_jax.training import config_base
from md4_jax.data import default_data_config


def get_config():
  config = config_base.get_base_config()
  config.data = default_data_config("cifar10")
  config.model.kind = "unet"
  config.model.size = "cifar10"
  config.model.network = {"dropout": 0.1, "time_conditioning": True, "dtype": "float32", "remat": False,
                          "attention": "auto"}
  config.optim.update(lr=4e-4, warmup_steps=100, weight_decay=0.01, b2=0.99, ema_decay=0.9999)
  config.train.update(num_steps=2_000_000, batch_size=256, eval_every=10_000, eval_batch_size=256,
                      checkpoint_every=5_000, sample_every=50_000, num_samples=16, log_every=500)
  config.sampler.num_steps = 256
  return config
