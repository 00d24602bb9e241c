"""MD4 on downsampled ImageNet 64x64 (paper: val bits/dim <= 3.40 with a 198M net; FID 17.8 at T=256 with this
cosine-schedule model): U-Net with a DiT middle (feature_dim 256, 8 ResBlocks, 20-layer DiT of width 768).

    python -m md4_jax.train --config experiments/imagenet64.py --workdir DIR --config.data.path=/data/tfds \
        --config.mesh.fsdp=8

Paper App. J: 2M iterations, lr 2e-4, batch 512, weight decay 0.03 (public config 0.01), warmup 100, dropout 0.1.
"""

from md4_jax.training import config_base
from md4_jax.data import default_data_config


def get_config():
  config = config_base.get_base_config()
  config.data = default_data_config("imagenet64")
  config.model.kind = "uvit"
  config.model.size = "imagenet64"
  config.model.network = {"dropout": 0.1, "time_conditioning": True, "dtype": "bfloat16", "remat": False,
                          "attention": "auto", "scan_layers": False}
  config.diffusion.schedule = "cosine"
  config.optim.update(lr=2e-4, warmup_steps=100, weight_decay=0.03, b2=0.99, ema_decay=0.9999)
  config.train.update(num_steps=2_000_000, batch_size=512, eval_every=10_000, eval_batch_size=512,
                      eval_batches=50, checkpoint_every=5_000, sample_every=50_000, num_samples=16, log_every=500)
  config.sampler.update(num_steps=256, schedule="cosine", grid="uniform")
  return config
