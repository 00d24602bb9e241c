"""MD4 on text8 (md4.md §5.7; paper: test BPC <= 1.37): 12 layers, 12 heads, width 768, L=256.

    python -m md4_jax.train --config experiments/text8.py --workdir gs://.../text8 --config.data.path=/data/text8.zip

Paper App. J: batch 512, lr 3e-4 with 2000 warmup steps, channel-wise dropout 0.05, weight decay 0.03, 1M steps,
EMA 0.9999. The text8 input embeds to head_dim first (md4 `outside_embed`).
"""

from md4_jax.training import config_base
from md4_jax.data import default_data_config


def get_config():
  config = config_base.get_base_config()
  config.data = default_data_config("text8")
  config.data.seq_len = 256
  config.model.size = "small"
  config.model.network.update(dropout=0.05, outside_embed=True)
  config.optim.update(lr=3e-4, warmup_steps=2000, weight_decay=0.03, b2=0.999, ema_decay=0.9999)
  config.train.update(num_steps=1_000_000, batch_size=512, eval_every=10_000, eval_batch_size=512,
                      checkpoint_every=5_000, sample_every=50_000, log_every=500)
  config.sampler.num_steps = 1000
  return config
